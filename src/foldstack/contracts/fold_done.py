"""``models/<model>/fold<k>/done.json``: a (model, fold) finished, and by which recipe.

Written last by the train stage, once the fold's predictions are on disk, so that its presence
means the fold is complete; read by the next ``train`` to skip the fold while its recipe (the
fingerprint) is unchanged.

Beside ``fold``, ``score`` and ``fingerprint`` the train stage records, among others,
``epochs`` (how many the log holds) and ``resumed_from``: the epoch at which the run that
finished the fold started, when an earlier run was killed after a backed-up epoch or a finished
phase (None: it trained from the first epoch); ``averaged``: the epochs whose weights
``best.weights.h5`` averages (a model's ``average``; None: one best epoch).
"""

from __future__ import annotations

import json
from pathlib import Path

from foldstack.core.files import write_json

NAME = "done.json"


def write(fold_dir: Path, record: dict) -> None:
    """Mark the fold finished. ``record`` holds at least ``fold``, ``score`` and ``fingerprint``."""
    missing = {"fold", "score", "fingerprint"} - record.keys()
    if missing:
        raise ValueError(f"done.json needs {', '.join(sorted(missing))}")
    write_json(fold_dir / NAME, record)


def exists(fold_dir: Path) -> bool:
    return (fold_dir / NAME).exists()


def finished(fold_dir: Path, fingerprint: str, source: str | None = None) -> dict | None:
    """The fold's record if it was finished by this very recipe, else None (also for a file
    that cannot be read: the fold then trains again). A ``source`` (what a second-round model
    learnt from: its teachers' weights, the test ids of its pseudo-labels) must match the
    record's too; the predict stage passes none, since the recipe alone says which network the
    weights fit."""
    try:
        record = json.loads((fold_dir / NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != fingerprint or (source is not None and record.get("source") != source):
        return None
    return record
