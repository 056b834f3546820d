"""``foldstack-bundle.json``: what a bundle holds, written by the bundle stage, read by the kernel.

The record names the pipeline, the foldstack version, the Python the wheels were chosen for, every
wheel (the kernel installs exactly these, offline) and every pretrained weight file with the cache
it goes back to. :func:`read` checks that each listed wheel and weight file is in the folder, so a
kernel whose attached bundle lacks a file stops with one line naming it, before installing or
predicting anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from foldstack.core.errors import DataError
from foldstack.core.files import write_json

NAME = "foldstack-bundle.json"
FORMAT = 1
WHEELS = "wheels"
WEIGHTS = "weights"
ARTIFACTS = "artifacts"
PIPELINE = "pipeline.yaml"


def write(folder: Path, record: dict) -> None:
    """Write the bundle's record. ``record`` holds ``pipeline``, ``foldstack``, ``python``,
    ``wheels`` (file names under ``wheels/``) and ``weights`` (``{kind: [file names]}``)."""
    missing = {"pipeline", "foldstack", "python", "wheels", "weights"} - record.keys()
    if missing:
        raise ValueError(f"{NAME} needs {', '.join(sorted(missing))}")
    write_json(folder / NAME, {"format": FORMAT, **record})


def find(root: Path) -> Path | None:
    """The bundle folder under ``root`` (a Kaggle input mount), searched a few levels deep."""
    for depth in range(4):
        found = sorted(root.glob("/".join(["*"] * depth + [NAME])))
        if found:
            return found[0].parent
    return None


def read(folder: Path) -> dict:
    """The record of the bundle in ``folder``, after checking every file it lists is there.

    Raises:
        DataError: no record, a record of another format, or a listed wheel or weight file missing.
    """
    path = Path(folder) / NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder}: not a foldstack bundle (no {NAME}); build one with `make bundle`") from None
    except ValueError as error:
        raise DataError(f"{path}: not valid JSON ({error}); build the bundle again") from None
    if record.get("format") != FORMAT:
        raise DataError(f"{path}: bundle format {record.get('format')!r}, this foldstack reads {FORMAT}; "
                        "build the bundle again with this version")
    for name in record["wheels"]:
        if not (folder / WHEELS / name).is_file():
            raise DataError(f"{folder}: the bundle lacks the wheel {WHEELS}/{name}; "
                            "build and upload the bundle again")
    for kind, names in record["weights"].items():
        for name in names:
            if not (folder / WEIGHTS / kind / name).is_file():
                raise DataError(f"{folder}: the bundle lacks the weight file {WEIGHTS}/{kind}/{name}; "
                                "build and upload the bundle again")
    return record
