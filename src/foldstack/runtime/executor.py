"""Where the (model, fold) jobs run: this machine's devices, one fold process each, or a Ray
cluster (:mod:`foldstack.runtime.ray_executor`).

A stage hands an executor its jobs (a worker function named as ``module:function`` and its
arguments, as :func:`foldstack.runtime.isolate.call` takes them) and a ``done`` callback, which
the executor calls in the stage's own thread as each job finishes, so the stage writes every
result (OOF file, ``done.json``) the moment it exists and a failure elsewhere loses nothing.

The local executor runs as many jobs at once as it has *slots*: one per GPU
(``CUDA_VISIBLE_DEVICES=<id>`` in the fold's process), or, without a GPU, one per CPU core asked
for. A job whose process dies (killed, out of memory) is tried again on the next free slot, up
to ``max_retries`` times, while the others go on; a job that fails with an error (bad input, a
bug) is not, and once the running jobs end its error is raised. Ctrl-C ends every running job's
process at once (:func:`foldstack.runtime.isolate.call`'s ``cancel``), hands the jobs that had
already finished to ``done``, and raises ``KeyboardInterrupt``: an interrupted fold resumes from
its last backed-up epoch on the next run.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from foldstack.core.config import ComputeConfig, ConfigError
from foldstack.runtime import isolate

log = logging.getLogger(__name__)

#: The slot a fold process runs in, for its record (``done.json``'s ``device``).
SLOT = "FOLDSTACK_SLOT"
#: Set to 1 in a fold process that trains data parallel over all its devices (``runtime.distribute``).
DATA_PARALLEL = "FOLDSTACK_DATA_PARALLEL"
#: How many devices a data-parallel fold splits over when they are the CPU's (virtual devices:
#: ``runtime.distribute`` makes them, JAX through ``XLA_FLAGS``).
CPU_DEVICES = "FOLDSTACK_CPU_DEVICES"

Slot = dict[str, str]


@dataclass(frozen=True)
class Job:
    """One call of a worker function in a process of its own.

    Attributes:
        name: what a person calls it in a message (``m fold 1``).
        function: ``module:function``, as ``isolate.call`` takes it.
        args: its arguments (picklable).
        on_message: receives what the job sends while it runs (progress ticks), where the
            executor can pass them on (the local one does).
        needs: the files it reads, checked where it runs (a Ray node must see them too).
    """

    name: str
    function: str
    args: tuple
    on_message: Callable[[Any], None] | None = None
    needs: tuple[Path, ...] = ()


#: Called in the caller's thread as each job ends: the job, its result, its seconds.
Done = Callable[[Job, Any, float], None]


class Executor(Protocol):
    def run(self, jobs: Sequence[Job], done: Done) -> None:
        """Run every job; ``done`` for each as it finishes. Raises the first job's error once
        the jobs already running have ended (and been handed to ``done``); on Ctrl-C, ends the
        running jobs and raises ``KeyboardInterrupt``."""


class LocalExecutor:
    """Jobs in processes of this machine, as many at once as there are slots (asked for once,
    when the first job comes: a stage with nothing to do starts no process)."""

    def __init__(self, slots: Callable[[], Sequence[Slot]], max_retries: int = 1):
        self._find_slots = slots
        self._slots: list[Slot] | None = None
        self.max_retries = max_retries

    @property
    def slots(self) -> list[Slot]:
        if self._slots is None:
            self._slots = list(self._find_slots())
        return self._slots

    def run(self, jobs: Sequence[Job], done: Done) -> None:
        if not jobs:
            return
        free: queue.Queue[Slot] = queue.Queue()
        for slot in self.slots:
            free.put(slot)
        stop = threading.Event()  # start no more jobs
        cancel = threading.Event()  # and end the running ones

        def attempt(job: Job) -> tuple[Any, float]:
            for tried in range(self.max_retries + 1):
                if stop.is_set():
                    raise isolate.Cancelled(job.name)
                slot = free.get()
                try:
                    started = time.perf_counter()
                    result = isolate.call(job.function, *job.args, on_message=job.on_message, env=slot, cancel=cancel)
                    return result, time.perf_counter() - started
                except isolate.ChildDied as error:
                    if tried == self.max_retries:
                        raise
                    log.warning("%s: %s; trying it again (%d of %d)", job.name, error, tried + 1, self.max_retries)
                finally:
                    free.put(slot)
            raise AssertionError("unreachable")

        if len(self.slots) == 1:  # one at a time, in this thread: Ctrl-C and errors as without slots
            for job in jobs:
                done(job, *attempt(job))
            return
        first: BaseException | None = None
        handed: set[Future] = set()
        with ThreadPoolExecutor(len(self.slots), thread_name_prefix="fold") as pool:
            futures = {pool.submit(attempt, job): job for job in jobs}
            try:
                for future in as_completed(futures):
                    try:
                        result, seconds = future.result()
                    except isolate.Cancelled:
                        continue
                    except BaseException as error:  # noqa: BLE001 - raised below, once the others end
                        first = first or error
                        stop.set()
                        continue
                    handed.add(future)
                    done(futures[future], result, seconds)
            except BaseException as error:  # Ctrl-C (or ``done`` failed): end the running folds now
                stop.set()
                cancel.set()
                pool.shutdown(wait=True, cancel_futures=True)
                if isinstance(error, KeyboardInterrupt):
                    _hand_finished(futures, handed, done)
                raise
        if first is not None:
            raise first


def _hand_finished(futures: dict[Future, Job], handed: set[Future], done: Done) -> None:
    """Hand ``done`` the jobs that finished while the caller was being interrupted: kept, not trained again."""
    for future, job in futures.items():
        if future not in handed and future.done() and not future.cancelled() and future.exception() is None:
            done(job, *future.result())


def local(compute: ComputeConfig, gpu_count: Callable[[], int]) -> LocalExecutor:
    """The local executor for ``compute``; ``gpu_count`` asks the backend (in a process of its
    own) how many GPUs it sees, and is called only when the answer matters. Its first ``run``
    with jobs raises a ConfigError if more devices are asked for than there are, or a GPU and
    none is found.
    """
    return LocalExecutor(lambda: slots(compute, gpu_count), compute.max_retries)


def slots(compute: ComputeConfig, gpu_count: Callable[[], int]) -> list[Slot]:
    """Each fold process's environment: its own GPU, or its own CPU slot; a data-parallel
    fold gets every device asked for, in one slot."""
    if compute.devices == 1 and compute.gpu == "auto" and not compute.data_parallel:
        return [{}]  # one fold at a time on whatever the backend finds: no need to ask
    gpus = gpu_count() if compute.gpu is not False else 0
    if compute.gpu is True and not gpus:
        raise ConfigError("compute.gpu = true: this machine has no GPU that the Keras backend sees")
    if gpus:
        ids = _visible_gpus(gpus)
        wanted = len(ids) if compute.devices == "auto" else compute.devices
        if wanted > len(ids):
            raise ConfigError(f"compute.devices = {compute.devices}: this machine has {len(ids)} GPU(s) "
                              f"({','.join(ids)}); ask for at most {len(ids)}")
        if compute.data_parallel:
            return [{"CUDA_VISIBLE_DEVICES": ",".join(ids[:wanted]), SLOT: "0", DATA_PARALLEL: "1"}]
        return [{"CUDA_VISIBLE_DEVICES": gpu, SLOT: str(slot)} for slot, gpu in enumerate(ids[:wanted])]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    wanted = 1 if compute.devices == "auto" else compute.devices
    if wanted > cores:
        raise ConfigError(f"compute.devices = {compute.devices}: this machine has no GPU and {cores} CPU core(s); "
                          f"ask for at most {cores}")
    hidden = {"CUDA_VISIBLE_DEVICES": ""} if compute.gpu is False else {}
    if compute.data_parallel:
        return [{**hidden, SLOT: "0", DATA_PARALLEL: "1", CPU_DEVICES: str(wanted),
                 "XLA_FLAGS": _xla_flags(f"--xla_force_host_platform_device_count={wanted}")}]
    return [{**hidden, SLOT: str(slot)} for slot in range(wanted)]


def _visible_gpus(count: int) -> list[str]:
    """The GPU ids a fold process may be given: those of the caller's own
    ``CUDA_VISIBLE_DEVICES`` where it set one, else 0 to ``count - 1``."""
    listed = [gpu.strip() for gpu in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu.strip()]
    return listed[:count] if listed else [str(gpu) for gpu in range(count)]


def _xla_flags(flag: str) -> str:
    """The caller's ``XLA_FLAGS`` with ``flag`` added (a flag already there for the same setting gives way)."""
    name = flag.split("=")[0]
    kept = [part for part in os.environ.get("XLA_FLAGS", "").split() if part.split("=")[0] != name]
    return " ".join([*kept, flag])
