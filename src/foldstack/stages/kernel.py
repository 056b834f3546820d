"""The `kernel` stage: what an offline Kaggle inference kernel runs once foldstack is installed
from the attached bundle (``foldstack kernel --bundle DIR``; the kernel script written by the
bundle stage calls it).

It lays the bundle's artifacts out under its root (scratch, ``core/paths.scratch_root``: the input
mount is read-only, the stages write beside the artifacts, and ``/kaggle/working`` keeps 20 GB),
puts the bundled ImageNet weights where Keras and foldstack look for them, then runs ``download``
(which unpacks a zipped competition mount to scratch, and does nothing for an unzipped one), then
projects the run time (each model's seconds per test image, measured by ``predict`` on the
training machine, times the mounted test set) and warns past ``time_limit``, then runs
``predict``, ``stack`` and ``submit``, each as ``foldstack <stage>`` in a process of its own as
Make would, and copies the submission to ``/kaggle/working/submission.csv``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from foldstack.backbones.pretrained import cache_dir
from foldstack.contracts import bundle_file
from foldstack.core.config import PipelineConfig
from foldstack.core.errors import DataError, FoldstackError
from foldstack.core.files import atomic_path
from foldstack.core.paths import Paths, kaggle_working_root
from foldstack.data import tables

log = logging.getLogger(__name__)

STEPS = ("predict", "stack", "submit")
SUBMISSION = "submission.csv"
#: A code competition's usual run-time limit, in hours (``foldstack kernel --time-limit``).
TIME_LIMIT_HOURS = 9.0


def run(cfg: PipelineConfig, paths: Paths, bundle: Path, time_limit: float = TIME_LIMIT_HOURS) -> Path:
    """Predict the mounted test set with the bundle's models; returns ``<working>/submission.csv``.

    Args:
        cfg: the bundle's pipeline (``<bundle>/pipeline.yaml``), loaded after :func:`restore_weights`
            put the bundle's pretrained files where they are read.
        paths: its folders under the working root.
        bundle: the attached bundle folder.
        time_limit: the competition's run-time limit in hours; a longer projection is warned about.

    Raises:
        DataError: ``bundle`` is not a complete bundle of this pipeline.
        FoldstackError: a stage failed (its own message is printed above).
    """
    record = bundle_file.read(bundle)
    if record["pipeline"] != cfg.name:
        raise DataError(f"{bundle}: a bundle of pipeline {record['pipeline']!r}, not {cfg.name!r}")
    _copy_tree(bundle / bundle_file.ARTIFACTS / cfg.name, paths.artifacts, replace=True)
    started = time.time()
    _stage("download", bundle, paths)
    print(projection(record, len(tables.read_test_table(cfg, paths)[0]), time_limit))
    for step in STEPS:
        _stage(step, bundle, paths)
    written = [path for path in paths.submissions.glob("*.csv")
               if path.name != "index.csv" and path.stat().st_mtime >= started - 1]
    if not written:
        raise FoldstackError(f"`foldstack submit` wrote no submission under {paths.submissions}")
    target = kaggle_working_root() / SUBMISSION
    with atomic_path(target) as tmp:
        shutil.copyfile(max(written, key=lambda path: path.stat().st_mtime), tmp)
    print(f"kernel: wrote {target}")
    return target


def _stage(step: str, bundle: Path, paths: Paths) -> None:
    command = [sys.executable, "-m", "foldstack.cli", step, "--pipeline", str(bundle / bundle_file.PIPELINE),
               "--root", str(paths.root)]
    log.info("kernel: %s", " ".join(command))
    if subprocess.call(command) != 0:
        raise FoldstackError(f"`foldstack {step}` failed (see above); the kernel stopped before {SUBMISSION}")


def projection(record: dict, images: int, time_limit: float) -> str:
    """One line: the projected predicting time of ``images`` test images from the bundle's
    seconds per image per model, and a warning when it passes ``time_limit`` hours."""
    paces = record.get("seconds_per_image") or {}
    unknown = sorted(name for name, pace in paces.items() if pace is None)
    seconds = images * sum(pace for pace in paces.values() if pace is not None)
    each = ", ".join(f"{name} {pace:.4f} s" for name, pace in paces.items() if pace is not None)
    line = (f"kernel: projected predict time {_hours(seconds)} for {images} test images "
            f"({each or 'no model measured'} per image, as measured by `predict` on the training machine); "
            f"limit {time_limit:g} h")
    if unknown:
        line += f"; not measured: {', '.join(unknown)} (run `make predict` before `make bundle`)"
    if seconds > time_limit * 3600:
        line += f"\nkernel: warning: the projection passes the {time_limit:g} h limit; use fewer models, folds or TTA views"
    return line


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h ({seconds:.0f} s)"


def restore_weights(bundle: Path) -> None:
    """The bundle's pretrained files into the caches they are read from. Before the pipeline is
    loaded too: validating a ``hub:<preset>`` backbone reads the preset, found in its cache."""
    for kind in bundle_file.read(bundle)["weights"]:
        # Never over a cached file: a cache may hold the same file already, in use.
        _copy_tree(bundle / bundle_file.WEIGHTS / kind, cache_dir(kind), replace=False)


def _copy_tree(source: Path, target: Path, replace: bool) -> None:
    """Copy every file of ``source`` to the same place under ``target`` (times kept)."""
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        destination = target / path.relative_to(source)
        if destination.exists() and not replace:
            continue
        with atomic_path(destination, suffix=path.suffix) as tmp:
            shutil.copy2(path, tmp)
