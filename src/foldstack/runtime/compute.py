"""The executor a pipeline's ``compute`` section asks for, for as long as a stage runs."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from foldstack.core.config import ComputeConfig
from foldstack.runtime import executor, isolate, ray_executor


@contextmanager
def executor_for(compute: ComputeConfig, worker: str) -> Iterator[executor.Executor]:
    """The local executor over this machine's devices, or a Ray executor connected to the
    cluster until the block ends. ``worker`` is the module whose ``gpu_count`` function says, in
    a fold process of its own, how many GPUs the backend sees there (asked only when it matters).

    Raises:
        ConfigError: devices or GPUs asked for that are not there; a Ray address that does not answer.
    """
    if compute.executor == "ray":
        with ray_executor.connected(compute) as ray:
            yield ray
    else:
        yield executor.local(compute, lambda: isolate.call(f"{worker}:gpu_count"))
