"""End to end: every stage of the default pipeline (digits) as ``foldstack <stage>`` in a fresh
temporary root, each a subprocess whose own wall time, CPU time and peak memory are read from
``os.wait4`` (the kernel's accounting of that one child).

``train`` runs each fold in a process of its own (from a fork server, which ``wait4`` does not
see): its CPU figures are the parent's alone, and the folds' peak memory is read from each
fold's ``done.json`` (``peak_mb``, the fold process's ``VmHWM``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import DIGITS_YAML, Row

STAGES = ("download", "folds", "train", "predict", "stack", "submit")
TARGET_S = 300.0


def stage(name: str, root: Path) -> dict:
    """Run one stage; its wall seconds, user and system CPU seconds and peak resident GB."""
    command = [sys.executable, "-m", "foldstack.cli", name, "--pipeline", str(DIGITS_YAML), "--root", str(root)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"foldstack {name} exited with {process.returncode}: {' '.join(command)}")
    return {"wall": time.perf_counter() - started, "user": usage.ru_utime, "sys": usage.ru_stime,
            "peak_gb": usage.ru_maxrss / 2**20, "faults": usage.ru_minflt}


def fold_peak_gb(root: Path) -> float:
    """The largest peak memory of any fold's own process, from the ``done.json`` files."""
    peaks = [json.loads(done.read_text()).get("peak_mb") or 0.0
             for done in root.glob("artifacts/*/models/*/fold*/done.json")]
    return max(peaks, default=0.0) / 1024


def run(folder: Path) -> list[Row]:
    rows, total = [], 0.0
    with tempfile.TemporaryDirectory(dir=folder) as root:
        for name in STAGES:
            got = stage(name, Path(root))
            total += got["wall"]
            folds = f"; fold processes peak {fold_peak_gb(Path(root)):.2f} GB" if name == "train" else ""
            rows.append(Row("e2e", f"foldstack {name}",
                            f"{got['wall']:.1f} s wall ({got['user']:.0f} s user, {got['sys']:.0f} s sys, "
                            f"{got['faults'] / 1e6:.1f} M minor faults), peak {got['peak_gb']:.2f} GB{folds}"))
    rows.append(Row("e2e", f"make all, digits ({len(STAGES)} stages)", f"{total:.0f} s", target=f"<= {TARGET_S:.0f} s",
                    met=total <= TARGET_S))
    return rows
