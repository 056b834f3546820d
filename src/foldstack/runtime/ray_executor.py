"""The (model, fold) jobs as tasks on a Ray cluster (``compute.executor: ray``).

Each job is one Ray task asking for one CPU and, where the cluster has GPUs, one GPU (Ray sets
the task's ``CUDA_VISIBLE_DEVICES``). A task runs in a Ray worker process that ends with it
(``max_calls=1``), so the fold's memory goes back to the node as with the local executor; a task
whose worker dies (killed, out of memory, its node lost) is run again by Ray, ``max_retries``
times, and an interrupted fold resumes from its last backup.

Files: a task reads the image caches and writes its fold's checkpoints where the driver put
them, so every node must mount the artifacts folder at the same path (a shared filesystem); its
result (the OOF or test probabilities) comes back to the driver, which writes the hand-off files
atomically, as the local executor's caller does.

What a task sends while it runs (a fold's per-epoch score, for the progress bar) goes through a
:class:`ray.util.queue.Queue` that the driver drains while it waits, and reaches the job's
``on_message`` in the driver's thread, as with the local executor. Ctrl-C in the driver cancels
the tasks still running (their workers are killed; a fold resumes from its last backup).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from foldstack.core.config import ComputeConfig, ConfigError
from foldstack.core.errors import FoldstackError, one_line
from foldstack.runtime.executor import Done, Job
from foldstack.runtime.isolate import ChildDied, ChildError

log = logging.getLogger(__name__)

#: Overrides ``compute.ray_address``.
ADDRESS_VARIABLE = "FOLDSTACK_RAY_ADDRESS"
#: How long a Ray address may take to accept a connection before it counts as not answering.
CONNECT_SECONDS = 5.0
#: How often the driver passes on the tasks' messages while it waits for them to end.
POLL_SECONDS = 0.5


class RayExecutor:
    """Jobs as Ray tasks; connects to the cluster when the first jobs come (a stage with
    nothing to do starts no cluster), and :meth:`close` disconnects if it connected."""

    def __init__(self, compute: ComputeConfig, address: str | None):
        self.compute = compute
        self.address = address
        self.num_gpus: int | None = None
        self._connected = False

    def _connect(self) -> None:
        """Connect, unless this process is connected already; then choose one GPU or none per task.

        Raises:
            ConfigError: GPUs asked for (``compute.gpu: true``) and the cluster has none.
        """
        import ray

        if not ray.is_initialized():
            quiet = logging.getLogger("foldstack").getEffectiveLevel() > logging.DEBUG
            ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=not quiet)
            self._connected = True
        resources = ray.cluster_resources()
        where = self.address or "this machine"
        if self.compute.gpu is True and not resources.get("GPU"):
            raise ConfigError(f"compute.gpu = true: the Ray cluster at {where} has no GPU")
        self.num_gpus = 1 if resources.get("GPU") and self.compute.gpu is not False else 0
        log.info("Ray cluster at %s: %s; one %s per fold", where, _resources(resources),
                 "GPU" if self.num_gpus else "CPU")

    def close(self) -> None:
        import ray

        if self._connected:
            ray.shutdown()
            self._connected = False

    def run(self, jobs: Sequence[Job], done: Done) -> None:
        import ray
        from ray.util.queue import Queue

        if not jobs:
            return
        if self.num_gpus is None:
            self._connect()
        max_retries = self.compute.max_retries
        # A worker process per task: the fold's memory (TensorFlow's traced graphs) goes back with it.
        remote = ray.remote(max_calls=1)(_run_job)
        messages = Queue(actor_options={"num_cpus": 0})  # (job's index, message) from every task
        refs = {remote.options(name=f"foldstack {job.name}", num_cpus=1, num_gpus=self.num_gpus,
                               max_retries=max_retries).remote(job.function, job.args, job.needs, messages, index): job
                for index, job in enumerate(jobs)}
        first: BaseException | None = None
        pending = list(refs)
        try:
            while pending:  # every job ends, whatever the others do: a finished fold is never lost
                ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
                _pass_on(messages, jobs)  # a job's messages all come before its end: it waits on each put
                if not ready:
                    continue
                job = refs[ready[0]]
                try:
                    outcome = ray.get(ready[0])
                except ray.exceptions.RayTaskError as error:  # a bug: its traceback, from the worker
                    first = first or ChildError(f"{job.function} ({job.name}) failed on the Ray cluster:\n{error}")
                    continue
                except ray.exceptions.RayError as error:
                    first = first or ChildDied(f"{job.name}: its Ray worker died {max_retries + 1} time(s) "
                                               f"(compute.max_retries = {max_retries}): {one_line(str(error))}")
                    continue
                if isinstance(outcome, _Failed):
                    first = first or FoldstackError(outcome.message)
                    continue
                result, seconds = outcome
                done(job, result, seconds)
        except BaseException:  # Ctrl-C: the running folds end now, not at their end
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            messages.shutdown(force=True)
        if first is not None:
            raise first


def _pass_on(messages: Any, jobs: Sequence[Job]) -> None:
    """Hand each message waiting in the queue to its job's ``on_message``."""
    waiting = messages.qsize()
    for index, message in messages.get_nowait_batch(waiting) if waiting else ():
        if jobs[index].on_message is not None:
            jobs[index].on_message(message)


class _Failed:
    """A job's one-line error (bad input), sent back as a value: Ray retries no error, and this
    keeps the message as the person should read it."""

    def __init__(self, message: str):
        self.message = message


def _run_job(function: str, args: tuple, needs: tuple[Path, ...], messages: Any,
             index: int) -> tuple[Any, float] | _Failed:
    """A job in a Ray worker: ``module:function(*args)``, its result and seconds; what it sends
    goes into ``messages`` (a Ray queue) as ``(index, message)``."""
    missing = [path for path in needs if not Path(path).exists()]
    if missing:
        return _Failed(f"{missing[0]}: not found on Ray node {socket.gethostname()}; the Ray executor needs the "
                       "artifacts folder on storage that every node mounts at the same path")
    module, name = function.split(":")

    def send(message: Any) -> None:  # waits until the message is in the queue: none outlives the task
        messages.put((index, message))

    started = time.perf_counter()
    try:
        result = getattr(importlib.import_module(module), name)(*args, send=send)
    except FoldstackError as error:
        return _Failed(str(error))
    return result, time.perf_counter() - started


@contextmanager
def connected(compute: ComputeConfig) -> Iterator[RayExecutor]:
    """A Ray executor on the cluster at ``FOLDSTACK_RAY_ADDRESS`` or ``compute.ray_address`` (a
    driver already connected, a notebook that called ``ray.init``, keeps its cluster); with
    neither, Ray's own choice: ``RAY_ADDRESS``, or a cluster started on this machine for the run.
    Disconnects at the end if it connected.

    Raises:
        ConfigError: the address does not answer (at once); GPUs asked for and the cluster has
            none (when the first jobs come).
    """
    key = ADDRESS_VARIABLE if os.environ.get(ADDRESS_VARIABLE) else "compute.ray_address"
    address = os.environ.get(ADDRESS_VARIABLE) or compute.ray_address
    if address:
        check_answers(address, key)
    executor = RayExecutor(compute, address)
    try:
        yield executor
    finally:
        executor.close()


def check_answers(address: str, key: str) -> None:
    """Raise a one-line error unless something accepts a connection at ``address`` (``host:port``
    or ``ray://host:port``; ``auto`` and ``local`` are Ray's to resolve). Ray itself would wait
    minutes on an address where nothing answers."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{key} = {address!r}: not a Ray address; expected host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise ConfigError(f"{key} = {address!r}: no Ray cluster answers there "
                          f"({one_line(error.strerror or str(error))})") from None


def _resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{int(resources.get(name, 0))} {name}" for name in ("CPU", "GPU"))
