"""Training overhead: foldstack's ``scratch`` fit (its callbacks: FoldScore, BestCheckpoint,
EarlyStopping, CSVLogger, BackupAndRestore) against a bare ``model.fit`` of the same network on
the same batches (``ImageBatches``, same augmentation, batch size and epochs).

Epoch times come from a callback; the first epoch (tracing) is reported apart.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Iterator

import keras
import numpy as np

from benchmarks import Row, digits_task

TARGET_OVERHEAD = 0.05


class EpochClock(keras.callbacks.Callback):
    """Wall time of each epoch, callbacks included (from one epoch's start to the next's), and of
    its training steps alone (from its start to its last batch's end: the step time, before the
    epoch-end work such as scoring the held-out fold and saving checkpoints)."""

    def __init__(self):
        super().__init__()
        self.starts: list[float] = []
        self.last_step: list[float] = []
        self.end = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.starts.append(time.perf_counter())
        self.last_step.append(self.starts[-1])

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.last_step[-1] = time.perf_counter()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.end = time.perf_counter()

    @property
    def epochs(self) -> np.ndarray:
        return np.diff([*self.starts, self.end])

    @property
    def steps(self) -> np.ndarray:
        return np.subtract(self.last_step, self.starts)


def foldstack_fit(task, images: dict[str, np.ndarray]) -> EpochClock:
    """Epoch and step times of ``training.regimes.fit`` (scratch regime), prediction of the fold excluded."""
    from foldstack.core import metrics
    from foldstack.training.regimes import fit

    clock = EpochClock()
    keras.utils.set_random_seed(task.seed)
    fit(task, images, metrics.get(task.metric), callbacks=[clock])
    keras.backend.clear_session()
    return clock


def bare_fit(task, images: dict[str, np.ndarray]) -> EpochClock:
    """Epoch and step times of a plain ``fit`` of the same network, schedule and batches, no callbacks."""
    from foldstack.training.network import build_network, compile_for, create_backbone
    from foldstack.training.regimes import train_batches

    keras.utils.set_random_seed(task.seed)
    network = build_network(task, create_backbone(task.model), frozen_statistics=False)
    data = train_batches(task, images)  # the scratch regime's own
    compile_for(task, network, task.model.lr, task.model.epochs, len(data))
    clock = EpochClock()
    network.fit(data, epochs=task.model.epochs, verbose=0, callbacks=[clock])
    keras.backend.clear_session()
    return clock


@contextlib.contextmanager
def tensorflow_trim_patch() -> Iterator[None]:
    """The allocator as TensorFlow leaves it (trim and mmap thresholds at 128 KiB) for each batch:
    foldstack before ``runtime.memory.keep_freed_memory``, for the before/after row."""
    from foldstack.runtime import memory
    from foldstack.training import loader

    def patched() -> None:
        memory._LIBC.mallopt(memory._M_MMAP_THRESHOLD, 128 << 10)
        memory._LIBC.mallopt(memory._M_TRIM_THRESHOLD, 128 << 10)

    fixed, loader.keep_freed_memory = loader.keep_freed_memory, patched
    try:
        yield
    finally:
        loader.keep_freed_memory = fixed


def run(folder: Path, epochs: int = 5, size: int = 16, rounds: int = 2) -> list[Row]:
    """Alternate bare and foldstack fits ``rounds`` times (so load drifts hit both alike), and
    foldstack's fit with TensorFlow's allocator setting (before the fix) against it."""
    bare, ours, before = [], [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            # patience above epochs: early stopping must not shorten foldstack's run
            settings = dict(epochs=epochs, image_size=size, patience=epochs + 1)
            bare.append(bare_fit(*digits_task(folder, "cnn", Path(tmp) / "bare", **settings)))
            ours.append(foldstack_fit(*digits_task(folder, "cnn", Path(tmp) / "fold", **settings)))
            with tensorflow_trim_patch():
                before.append(foldstack_fit(*digits_task(folder, "cnn", Path(tmp) / "before", **settings)))

    def steady(clocks: list[EpochClock], what: str) -> float:  # epochs 2.. (the first traces)
        return float(np.mean([getattr(c, what)[1:].mean() for c in clocks]))

    bare_step, ours_step = steady(bare, "steps"), steady(ours, "steps")
    bare_epoch, ours_epoch = steady(bare, "epochs"), steady(ours, "epochs")
    bare_all = float(np.mean([c.epochs.sum() for c in bare]))
    ours_all = float(np.mean([c.epochs.sum() for c in ours]))
    before_epoch = steady(before, "epochs")
    step, epoch, whole = ours_step / bare_step - 1, ours_epoch / bare_epoch - 1, ours_all / bare_all - 1
    return [
        Row("training", f"small_cnn {size}px, epochs 2-{epochs}: step time, foldstack / bare fit",
            f"{ours_step:.2f} s vs {bare_step:.2f} s of steps per epoch ({step:+.0%})",
            ours_step / bare_step, f"<= {1 + TARGET_OVERHEAD:.2f}", step <= TARGET_OVERHEAD),
        Row("training", f"small_cnn {size}px, epochs 2-{epochs}: whole epoch (with scoring the held-out "
                        "fold, checkpoints)",
            f"{ours_epoch:.2f} s vs {bare_epoch:.2f} s per epoch ({epoch:+.0%})", ours_epoch / bare_epoch),
        Row("training", f"small_cnn {size}px, all {epochs} epochs (1st traces)",
            f"{ours_all:.1f} s vs {bare_all:.1f} s ({whole:+.0%})", ours_all / bare_all),
        Row("training", f"small_cnn {size}px, epochs 2-{epochs}: speed-up of the malloc fix",
            f"{before_epoch:.2f} s before vs {ours_epoch:.2f} s after per epoch",
            before_epoch / ours_epoch),
    ]
