"""Stacking at scale: time and peak memory of every level-2 candidate's cross-validation on a
synthetic OOF (rows x 5 models x 120 classes, 5 folds: a dog-breed-sized competition scaled up).

Each candidate runs in its own subprocess, which reports its own wall time and peak resident
memory (``VmHWM``; not ``ru_maxrss``, which Linux carries over from the parent through the exec,
so a child of a process holding TensorFlow would report TensorFlow's memory).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import REPO, Row

TARGET_S, TARGET_GB = 600.0, 8.0
PIPELINE = REPO / "pipelines" / "dog-breed-identification.yaml"  # 120 classes, log loss


def synthetic_oof(rows: int, models: int = 5, classes: int = 120, folds: int = 5, seed: int = 0):
    """``(X, y, fold)``: base models that are right more often than chance, to differing degrees."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=rows)
    logits = rng.normal(size=(rows, models, classes)).astype(np.float64)
    logits[np.arange(rows), :, y] += np.linspace(1.0, 3.0, models)  # model m's skill
    proba = np.exp(logits - logits.max(axis=2, keepdims=True))
    return proba / proba.sum(axis=2, keepdims=True), y, rng.integers(0, folds, size=rows)


def measure(name: str, rows: int) -> dict:
    """Cross-validate candidate ``name`` in this process: seconds and peak resident GB."""
    from foldstack.core import metrics
    from foldstack.level2 import candidates
    from foldstack.level2.selection import cross_validate
    from foldstack.pipeline import load_pipeline

    cfg = load_pipeline(PIPELINE)
    X, y, fold = synthetic_oof(rows)
    started = time.perf_counter()
    cross_validate(candidates.get(name).build(cfg), X, y, fold, metrics.get(cfg.metric))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_gb": _peak_kib() / 2**20}


def _peak_kib() -> int:
    """This process's peak resident memory in KiB (Linux ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


def run(rows: int, timeout_s: float = TARGET_S * 1.5) -> list[Row]:
    """One subprocess per candidate that applies to log loss; one that runs past ``timeout_s``
    is stopped and reported as slower than that."""
    from foldstack.core import metrics
    from foldstack.level2 import candidates

    names = [n for n in candidates.names() if candidates.get(n).applies(metrics.get("log_loss"))]
    out = []
    for name in names:
        command = [sys.executable, "-m", "benchmarks.stacking", name, str(rows)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            out.append(Row("stacking", f"{name}, {rows:,} x 5 x 120", f"over {timeout_s:.0f} s (stopped)",
                           target=f"<= {TARGET_S:.0f} s, {TARGET_GB:.0f} GB", met=False))
            continue
        met = result["seconds"] <= TARGET_S and result["peak_gb"] <= TARGET_GB
        out.append(Row("stacking", f"{name}, {rows:,} x 5 x 120",
                       f"{result['seconds']:.1f} s, peak {result['peak_gb']:.2f} GB",
                       target=f"<= {TARGET_S:.0f} s, {TARGET_GB:.0f} GB", met=met))
    return out


if __name__ == "__main__":  # the subprocess: `python -m benchmarks.stacking <candidate> <rows>`
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
