"""A stand-in for a Kaggle kernel's Python, built from the Kaggle image's published package
versions (tests/kaggle-image.txt), not from this test environment's.

The published packages are installed once into a virtual environment cached outside the
repository, ``~/.cache/foldstack/kaggle-image-<key>`` (``$FOLDSTACK_CACHE`` moves it), keyed by
the version list and this Python's X.Y: a new list builds a new one (a few minutes, mostly
TensorFlow's wheel), an unchanged one is reused. ``make test``'s set-up builds it ahead
(``python tests/kaggle_image.py``); a test that needs it builds it on first use otherwise. A lock
keeps two pytest workers from building it at once, and a marker written last keeps a half-built
one from being used.

Each test then gets a fresh, empty environment (:func:`make_image`) that sees the cached one's
site-packages through a ``.pth`` file, as a kernel sees the image's: pip installs into the fresh
one only (what it upgrades shadows the image's copy), so no test changes the cache. pip comes from
the image too, as it does on Kaggle. Python itself stays this machine's (3.11; Kaggle's is 3.12):
the tests build bundles with ``--python`` for the interpreter they run.

:func:`offline` runs a command in a network namespace with no route out (``unshare --net``: the
loopback alone), with no proxy variable and no pip configuration (the machine's ``/etc/pip.conf`` names local indexes).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

VERSIONS = Path(__file__).with_name("kaggle-image.txt")
#: Written last into a built environment: without it the folder is a failed build, built again.
COMPLETE = ".foldstack-complete"
#: Variables that would let a process reach the network around the namespace, or change what pip reads.
NETWORK_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def pins() -> list[str]:
    """The image's packages, ``name==version``, as tests/kaggle-image.txt lists them."""
    lines = (line.split("#")[0].strip() for line in VERSIONS.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def image_key() -> str:
    """The cache key: the version list and this Python's X.Y."""
    text = f"python{sys.version_info.major}.{sys.version_info.minor}\n" + "\n".join(sorted(pins()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("FOLDSTACK_CACHE") or Path.home() / ".cache" / "foldstack")


def published_image() -> Path:
    """The cached environment of the published versions (built here the first time); its folder."""
    folder = cache_root() / f"kaggle-image-{image_key()}"
    if (folder / COMPLETE).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building it: wait for it
        if not (folder / COMPLETE).is_file():
            _build(folder)
    return folder


def _build(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([_base_python(), "-m", "venv", str(folder)], check=True)
    # The index, as pip is configured on this machine (PyPI); the versions are pinned, the rest resolved.
    done = subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", "-r", str(VERSIONS)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"building the Kaggle image's environment in {folder} failed:\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - started
    (folder / COMPLETE).write_text(f"built in {seconds:.0f} s from {VERSIONS.name}\n")
    print(f"kaggle image: built {folder} in {seconds:.0f} s", file=sys.stderr)


def _base_python() -> str:
    return getattr(sys, "_base_executable", sys.executable)


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def make_image(folder: Path) -> Path:
    """A fresh environment under ``folder`` that sees the published image's packages; its ``python``."""
    image = published_image()
    venv = folder / "venv"
    subprocess.run([_base_python(), "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages(venv) / "kaggle-image.pth").write_text(
        f"import site; site.addsitedir({str(site_packages(image))!r})\n")
    return venv / "bin" / "python"


def add_pytest(python: Path) -> None:
    """Let the environment of ``python`` (from :func:`make_image`) run pytest: this environment's
    pytest and its few pure-Python dependencies, seen through links, as the image's packages are."""
    import pytest

    here = Path(pytest.__file__).resolve().parents[1]
    links = python.parents[1] / "pytest-links"
    links.mkdir()
    for entry in here.iterdir():
        if re.match(r"(_?pytest|pluggy|iniconfig|py)([-.]|$)", entry.name):
            (links / entry.name).symlink_to(entry)
    (site_packages(python.parents[1]) / "pytest-links.pth").write_text(f"import site; site.addsitedir({str(links)!r})\n")


def offline_env(python: Path, **extra: str) -> dict[str, str]:
    """This process's environment without proxies or pip settings, the image's ``bin`` first on
    ``PATH``, and nothing of this checkout on the Python path (foldstack must come from what was
    installed). Run the command through :func:`offline` to cut the network."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV") and key.lower() not in NETWORK_VARIABLES
           and not key.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra})
    return env


def offline(command: list) -> list[str]:
    """``command`` run in a new network namespace (we are root): the loopback up, as in a kernel
    (a test's stand-in server listens there), and no other interface, so no route out."""
    return ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
            *(str(part) for part in command)]


if __name__ == "__main__":  # make test's set-up: build the environment ahead of the tests
    print(published_image())
