"""End to end: every stage of the default pipeline (digits) as ``foldstack <stage>`` in a fresh
temporary root, each a subprocess whose own wall time, CPU time and peak memory are read from
``os.wait4`` (the kernel's accounting of that one child).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import DIGITS_YAML, Row

STAGES = ("download", "folds", "train", "stack", "submit")
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


def run(folder: Path) -> list[Row]:
    rows, total = [], 0.0
    with tempfile.TemporaryDirectory(dir=folder) as root:
        for name in STAGES:
            got = stage(name, Path(root))
            total += got["wall"]
            rows.append(Row("e2e", f"foldstack {name}",
                            f"{got['wall']:.1f} s wall ({got['user']:.0f} s user, {got['sys']:.0f} s sys, "
                            f"{got['faults'] / 1e6:.1f} M minor faults), peak {got['peak_gb']:.2f} GB"))
    rows.append(Row("e2e", "make all, digits (5 stages)", f"{total:.0f} s", target=f"<= {TARGET_S:.0f} s",
                    met=total <= TARGET_S))
    return rows
