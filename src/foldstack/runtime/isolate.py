"""Run a function in a child process of its own, so everything it allocated goes back to the OS.

Why the train stage needs it: TensorFlow keeps the traced graphs of every model a process has
fit, and ``keras.backend.clear_session()`` does not free them, so memory grows fold after fold
(measured in benchmarks/RESULTS.md, "Memory, fold over fold"). A fold in its own process hands
all of it back when it exits.

Children come from a fork server that imported the called function's module once, so a call
starts in milliseconds instead of paying a TensorFlow import each time. The server starts with the
first call and imports that call's module and every module named by :func:`child_module`: a
process that runs children of two modules (a test session, a notebook calling the bundle stage,
then training) would otherwise pay the other module's import in every child of it. Where the
platform has no fork server (Windows), children are spawned. The caller never imports the module
(or Keras).

A child:

* ends when its parent dies, even by SIGKILL: a thread waits on the parent's sentinel, so a
  killed ``foldstack train`` leaves no orphan writing into the fold it was training;
* may ``send`` messages while it runs (progress ticks), handed to the caller's ``on_message``;
* returns its result, or its error: a :class:`FoldstackError` (or a full disk) becomes the same
  one-line error in the parent, Ctrl-C the parent's ``KeyboardInterrupt``, anything else a
  :class:`ChildError` carrying the child's traceback;
* is ended promptly when the caller stops waiting for it (Ctrl-C in the parent, which a notebook
  sends to the parent alone, or the caller's ``cancel`` event): interrupted as Ctrl-C would
  interrupt it, so its atomic writes unwind, then killed if it has not ended within
  :data:`STOP_SECONDS`. A fold's finished epochs are in its backup either way.
"""

from __future__ import annotations

import _thread
import importlib
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import traceback
from multiprocessing.connection import wait
from typing import Any, Callable

from foldstack.core.errors import DiskFullError, FoldstackError, is_disk_full
from foldstack.core.logs import setup_logging
from foldstack.runtime.native_logs import filtered_stderr

_INTERRUPTED = 130
_starting = threading.Lock()
#: How long an interrupted child may take to end before it is killed.
STOP_SECONDS = 5.0
#: The modules whose functions run in children of this process (:func:`child_module`).
_modules: set[str] = set()
#: Preloaded by the fork server after every other module (see its docstring).
FORK_SERVER = "foldstack.runtime.fork_server"


def child_module(module: str) -> str:
    """Names ``module`` as one whose functions this process runs in children (its fork server
    imports it when it starts, whichever module the first call names); returns it, for a constant."""
    _modules.add(module)
    return module


class ChildError(RuntimeError):
    """The child failed with an unexpected error (a bug) or died; the message holds its traceback."""


class ChildDied(ChildError):
    """The child's process ended without a result (killed, out of memory): worth another try."""


class Cancelled(Exception):
    """The caller cancelled the call (its ``cancel`` event was set); the child has been ended."""


def call(function: str, *args: Any, on_message: Callable[[Any], None] | None = None,
         env: dict[str, str] | None = None, cancel: threading.Event | None = None) -> Any:
    """``module:function`` run in a child process as ``function(*args, send=...)``; its result.

    ``function`` is named, not passed, so that the parent never imports the module (and Keras).
    ``env`` is set in the child's environment before the function runs (its device:
    ``CUDA_VISIBLE_DEVICES``). Several threads may call at once, each waiting on its own child;
    another thread stops one by setting its ``cancel`` (the call then raises :class:`Cancelled`),
    as Ctrl-C stops the one the main thread waits on.
    """
    context = _context(preload=function.split(":")[0])
    messages = context.Queue()
    level = logging.getLogger("foldstack").getEffectiveLevel()
    child = context.Process(target=_child, args=(function, args, level, messages, env or {}), daemon=True,
                            name=function)
    # The fork server starts with the first child and passes its stderr on to every later one:
    # TensorFlow's start-up lines are filtered out of it unless foldstack logs at debug level.
    # One start at a time: the filter swaps this process's file descriptor 2 in and out.
    with _starting, filtered_stderr(enabled=level > logging.DEBUG):
        child.start()
    last_word = False
    try:
        while True:
            kind, payload = _next(messages, child, function, cancel)
            if kind == "message":
                if on_message is not None:
                    on_message(payload)
                continue
            last_word = True
            if kind == "result":
                return payload
            if kind == "error":
                raise FoldstackError(payload)
            raise ChildError(f"{function} failed in its own process:\n{payload}")
    finally:
        if last_word:
            child.join(timeout=60)  # it is exiting
        else:  # the caller stopped waiting (Ctrl-C, cancelled, failed) or the child died
            _stop(child)
        if child.is_alive():
            child.kill()
            child.join()


def _stop(child: multiprocessing.Process) -> None:
    """End a child still at work as Ctrl-C would (its atomic writes unwind), within ``STOP_SECONDS``."""
    # A terminal's Ctrl-C reached the child as well: a moment to end by itself, so that a second
    # SIGINT does not cut its unwinding short.
    child.join(timeout=1.0)
    if child.is_alive():
        try:
            os.kill(child.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        child.join(timeout=STOP_SECONDS)


def _next(messages: multiprocessing.Queue, child: multiprocessing.Process, function: str,
          cancel: threading.Event | None = None) -> tuple[str, Any]:
    """The child's next message; raises if it died without a last word, or the call was cancelled."""
    while True:
        try:
            return messages.get(timeout=0.2)
        except queue.Empty:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"{function}: cancelled") from None
            if child.is_alive():
                continue
        try:  # it may have sent its result just before it ended
            return messages.get(timeout=1.0)
        except queue.Empty:
            pass
        if child.exitcode == _INTERRUPTED:
            raise KeyboardInterrupt
        how = (f"was killed by signal {-child.exitcode} (out of memory?)" if child.exitcode < 0
               else f"exited with status {child.exitcode}")
        raise ChildDied(f"{function}: its process {how} without a result")


def _context(preload: str) -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Takes effect when the server starts (first call); fork_server last, so that its atexit handler runs first.
    context.set_forkserver_preload([*sorted(_modules | {preload}), FORK_SERVER])
    return context


def _child(function: str, args: tuple, level: int, messages: multiprocessing.Queue, env: dict[str, str]) -> None:
    _end_with_parent()
    os.environ.update(env)
    setup_logging(level)
    sys.unraisablehook = _quiet_interrupts
    try:
        module, name = function.split(":")
        target = getattr(importlib.import_module(module), name)
        result = target(*args, send=lambda message: messages.put(("message", message)))
        messages.put(("result", result))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C (the parent's) changes nothing now
        raise SystemExit(_INTERRUPTED) from None
    except FoldstackError as error:
        messages.put(("error", str(error)))
    except OSError as error:
        if is_disk_full(error):
            messages.put(("error", str(DiskFullError(error.filename))))
        else:
            messages.put(("crash", traceback.format_exc()))
    except BaseException:  # noqa: BLE001 - anything else is a bug: the parent shows its traceback
        messages.put(("crash", traceback.format_exc()))
    finally:
        messages.close()
        messages.join_thread()


def _end_with_parent() -> None:
    """Exit at once when the parent process ends, however it ends."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(_INTERRUPTED)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _quiet_interrupts(unraisable) -> None:
    """Ctrl-C landing where Python cannot raise it (a garbage-collection callback such as JAX's,
    which TensorFlow's import brings in) would be printed as "Exception ignored in ..." and then
    lost: the fold would train on. It is delivered to the main thread again instead, a moment later
    from a thread of its own, so that it lands once this callback has returned."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        again = threading.Timer(0.05, _thread.interrupt_main)
        again.daemon = True
        again.start()
    else:
        sys.__unraisablehook__(unraisable)
