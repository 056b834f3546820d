"""The `kernel` stage: what an offline Kaggle inference kernel runs once foldstack is installed
from the attached bundle (``foldstack kernel --bundle DIR``; the kernel script written by the
bundle stage calls it).

It lays the bundle's artifacts out under the working root (``/kaggle/working``: the input mount
is read-only and the stages write beside the artifacts), puts the bundled ImageNet weights where
Keras and foldstack look for them, then runs ``predict``, ``stack`` and ``submit`` on the test set
the kernel mounts, each as ``foldstack <stage>`` in a process of its own as Make would, and copies
the submission to ``/kaggle/working/submission.csv``.
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

log = logging.getLogger(__name__)

STEPS = ("predict", "stack", "submit")
SUBMISSION = "submission.csv"


def run(cfg: PipelineConfig, paths: Paths, bundle: Path) -> Path:
    """Predict the mounted test set with the bundle's models; returns ``<working>/submission.csv``.

    Args:
        cfg: the bundle's pipeline (``<bundle>/pipeline.yaml``).
        paths: its folders under the working root.
        bundle: the attached bundle folder.

    Raises:
        DataError: ``bundle`` is not a complete bundle of this pipeline.
        FoldstackError: a stage failed (its own message is printed above).
    """
    record = bundle_file.read(bundle)
    if record["pipeline"] != cfg.name:
        raise DataError(f"{bundle}: a bundle of pipeline {record['pipeline']!r}, not {cfg.name!r}")
    _copy_tree(bundle / bundle_file.ARTIFACTS / cfg.name, paths.artifacts, replace=True)
    restore_weights(bundle)
    started = time.time()
    for step in STEPS:
        command = [sys.executable, "-m", "foldstack.cli", step, "--pipeline", str(bundle / bundle_file.PIPELINE),
                   "--root", str(paths.root)]
        log.info("kernel: %s", " ".join(command))
        if subprocess.call(command) != 0:
            raise FoldstackError(f"`foldstack {step}` failed (see above); the kernel stopped before {SUBMISSION}")
    written = [path for path in paths.submissions.glob("*.csv")
               if path.name != "index.csv" and path.stat().st_mtime >= started - 1]
    if not written:
        raise FoldstackError(f"`foldstack submit` wrote no submission under {paths.submissions}")
    target = kaggle_working_root() / SUBMISSION
    with atomic_path(target) as tmp:
        shutil.copyfile(max(written, key=lambda path: path.stat().st_mtime), tmp)
    print(f"kernel: wrote {target}")
    return target


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
