"""``make setup`` inside a Kaggle kernel: bring the image to foldstack's pins, then install foldstack.

The Kaggle image already holds TensorFlow, Keras and most of ``requirements.txt``, some at other
versions than the pins, and lacks a few (``iterative-stratification``). This installs exactly the
pins the image lacks or holds at another version, and says so one line per package; it leaves
:data:`IMAGE_OWNS` as the image has them. The wheels come from an attached folder of wheels (a
bundle's ``wheels/`` serves: ``--find-links DIR --no-index``), found under the input mount when
not named, else from the package index (a kernel with Internet on). foldstack itself is then
installed from its source tree, editable, with no index and no dependencies.

Run before foldstack or its dependencies are installed (``PYTHONPATH=src python -m
foldstack.runtime.kernel_setup``), so it imports the standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

#: Requirements the image's own build serves, never replaced: TensorFlow's is matched to the
#: image's CUDA and cuDNN (a PyPI wheel of another version runs on the CPU, or brings gigabytes
#: of nvidia-* wheels); Ray runs folds on a cluster, which a kernel is not.
IMAGE_OWNS = ("tensorflow", "ray")
#: How deep under the input mount a folder of wheels is looked for (``datasets/<owner>/<name>/wheels``).
SEARCH_DEPTH = 4


def fail(message: str) -> None:
    """Stop with one line, as foldstack's command line does (exit status 2)."""
    print(f"kernel set-up: error: {message}", file=sys.stderr)
    sys.exit(2)


def normal_name(name: str) -> str:
    """A distribution's name as pip compares them: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(requirements: Path) -> dict[str, str]:
    """Requirement name (normalised) -> pinned version, from ``name==version`` lines."""
    pins = {}
    for number, line in enumerate(requirements.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            fail(f"{requirements}:{number}: {line!r} is not pinned (name==version)")
        pins[normal_name(name.strip())] = version.strip()
    return pins


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def differences(pins: dict[str, str]) -> tuple[list[str], list[str]]:
    """The pins to install, and one line per package whose version differs from its pin."""
    install, lines = [], []
    for name, version in pins.items():
        have = installed_version(name)
        if have == version:
            continue
        had = f"{have} in the image" if have else "not in the image"
        if name in IMAGE_OWNS:
            lines.append(f"kernel set-up: {name} {version} pinned, {had}: kept (the image's own build)")
        else:
            lines.append(f"kernel set-up: {name} {version} pinned, {had}: installing {version}")
            install.append(f"{name}=={version}")
    return install, lines


def find_wheels(root: Path) -> Path | None:
    """The first folder named ``wheels`` holding a ``.whl`` under ``root``, a few levels deep."""
    for depth in range(SEARCH_DEPTH):
        for folder in sorted(root.glob("/".join(["*"] * depth + ["wheels"]))):
            if folder.is_dir() and any(folder.glob("*.whl")):
                return folder
    return None


def pip(python: str, *args: str) -> None:
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        fail(f"pip install {' '.join(args[-3:])} failed: {lines[0] if lines else done.returncode}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kernel_setup", description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", default="requirements.txt", help="the pins (default: requirements.txt)")
    parser.add_argument("--source", default=".", help="foldstack's source tree, installed editable (default: .)")
    parser.add_argument("--wheels", help="a folder of wheels to install from, offline (default: the first "
                                         "wheels/ folder under the input mount, else the package index)")
    args = parser.parse_args(argv)
    install, lines = differences(read_pins(Path(args.requirements)))
    print("\n".join(lines) if lines else "kernel set-up: the image holds every pin")
    if install:
        root = Path(os.environ.get("FOLDSTACK_KAGGLE_INPUT") or "/kaggle/input")
        wheels = Path(args.wheels) if args.wheels else find_wheels(root)
        where = ["--no-index", "--find-links", str(wheels)] if wheels else []
        print(f"kernel set-up: installing {len(install)} from {wheels or 'the package index'}")
        # The image's own packages hold at their versions whatever a pin's dependencies ask.
        held = [f"{name}=={version}" for name in IMAGE_OWNS if (version := installed_version(name))]
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
            constraints.write("".join(f"{line}\n" for line in held))
            constraints.flush()
            pip(sys.executable, *where, "--constraint", constraints.name, *install)
    # No index, no dependencies, no isolated build environment (pip would fill it from the Internet).
    pip(sys.executable, "--no-index", "--no-deps", "--no-build-isolation", "-e", args.source)


if __name__ == "__main__":
    main()
