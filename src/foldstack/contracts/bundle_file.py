"""``foldstack-bundle.json``: what a bundle holds, written by the bundle stage, read by the kernel.

The record names the pipeline, the foldstack version, the Pythons the wheels were chosen for
(``pythons``: the kernel's script refuses to install under any other), every wheel, the requirement pins the bundle ships and every pretrained weight file with the cache it
goes back to. Beside it, ``requirements.txt`` holds those pins, one a line, for the kernel's
``pip install --no-index --find-links wheels -r requirements.txt``: pip keeps each one the image
already has at the pin and installs the others from ``wheels/``. :func:`read` checks that each
listed wheel and weight file is in the folder and that each pin has its wheel, so a kernel whose
attached bundle lacks a file stops with one line naming it, before installing or predicting anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from foldstack.core.errors import DataError
from foldstack.core.files import write_json, write_text

NAME = "foldstack-bundle.json"
FORMAT = 3  # 2: requirements.txt and the record's "requirements"; 3: "pythons", a list
WHEELS = "wheels"
REQUIREMENTS = "requirements.txt"
WEIGHTS = "weights"
ARTIFACTS = "artifacts"
PIPELINE = "pipeline.yaml"


def write(folder: Path, record: dict) -> None:
    """Write the bundle's record and its ``requirements.txt``. ``record`` holds ``pipeline``,
    ``foldstack``, ``pythons`` (``["3.12"]``), ``wheels`` (file names under ``wheels/``), ``requirements`` (pins
    such as ``keras==3.15.1``, each with its wheel there), ``weights`` (``{kind: [file names]}``) and,
    optionally, ``seconds_per_image`` (``{model: seconds}`` as ``predict`` measured them; the kernel
    projects its run time from them)."""
    missing = {"pipeline", "foldstack", "pythons", "wheels", "requirements", "weights"} - record.keys()
    if missing:
        raise ValueError(f"{NAME} needs {', '.join(sorted(missing))}")
    write_text(folder / REQUIREMENTS, "".join(f"{pin}\n" for pin in record["requirements"]))
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
        DataError: no record, a record of another format, a listed wheel or weight file missing, or
            a pin of ``requirements.txt`` without its wheel.
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
    try:
        pins = (Path(folder) / REQUIREMENTS).read_text(encoding="utf-8").split()
    except FileNotFoundError:
        raise DataError(f"{folder}: the bundle lacks {REQUIREMENTS}; build and upload the bundle again") from None
    shipped = {wheel_pin(path.name) for path in (Path(folder) / WHEELS).glob("*.whl")}
    for pin in pins:
        if normal_pin(pin) not in shipped:
            raise DataError(f"{folder}: the bundle lacks the wheel of {pin} ({WHEELS}/{pin.split('==')[0]}-*.whl); "
                            "build and upload the bundle again")
    for kind, names in record["weights"].items():
        for name in names:
            if not (folder / WEIGHTS / kind / name).is_file():
                raise DataError(f"{folder}: the bundle lacks the weight file {WEIGHTS}/{kind}/{name}; "
                                "build and upload the bundle again")
    return record


def normal_name(name: str) -> str:
    """A distribution's name as pip compares them: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def normal_pin(pin: str) -> str:
    """``Foo_Bar==1.0`` -> ``foo-bar==1.0``."""
    name, _, version = pin.partition("==")
    return f"{normal_name(name.strip())}=={version.strip()}"


def wheel_pin(file_name: str) -> str:
    """The pin a wheel file satisfies: ``foo_bar-1.0-py3-none-any.whl`` -> ``foo-bar==1.0``."""
    name, version = file_name.split("-")[:2]
    return f"{normal_name(name)}=={version}"


def wheel_fits(file_name: str, python: str) -> bool:
    """Whether a wheel installs on CPython ``python`` (``3.12``), by its tags: built for that
    CPython (``cp312-cp312``), for the stable ABI of it or an older one (``cp310-abi3``), or for
    any Python 3 (``py3-none``). The platform tag is pip's choice and not looked at."""
    major, minor = (int(part) for part in python.split("."))
    py_tags, abi_tags = file_name.removesuffix(".whl").split("-")[-3:-1]
    abis = abi_tags.split(".")
    for tag in py_tags.split("."):
        cpython = re.fullmatch(r"cp(\d)(\d+)", tag)
        if cpython and int(cpython[1]) == major:
            built = int(cpython[2])
            if (built == minor and (f"cp{major}{minor}" in abis or "none" in abis)) or \
                    ("abi3" in abis and built <= minor):
                return True
        if tag in (f"py{major}", f"py{major}{minor}") and "none" in abis:
            return True
    return False
