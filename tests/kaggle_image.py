"""A stand-in for a Kaggle kernel's Python: a fresh virtual environment that already holds the
heavy packages (TensorFlow, Keras, LightGBM, ...) but not foldstack, with the network blocked.

The heavy packages are this test environment's own, seen through a folder of links (foldstack's
own editable install left out) that the new environment's ``kaggle-image.pth`` adds to its path,
as a Kaggle image's site-packages are seen from a ``--system-site-packages`` environment. pip too
comes from there, as it does on Kaggle. Creating one takes well under a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

#: Where any request for the Internet goes: a closed port on the loopback (refused at once).
NO_NETWORK = "http://127.0.0.1:9"


def make_image(folder: Path) -> Path:
    """Create the environment under ``folder``; returns its ``python``."""
    heavy = folder / "image-site-packages"
    heavy.mkdir(parents=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "foldstack" not in entry.name:
            (heavy / entry.name).symlink_to(entry)
    venv = folder / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--system-site-packages",
                    "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "kaggle-image.pth").write_text(f"import site; site.addsitedir({str(heavy)!r})\n")
    return venv / "bin" / "python"


def offline_env(python: Path, **extra: str) -> dict[str, str]:
    """This process's environment with the network blocked, the image's ``bin`` first on ``PATH``,
    and nothing of this checkout on the Python path (foldstack must come from what was installed)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "HTTP_PROXY": NO_NETWORK, "HTTPS_PROXY": NO_NETWORK, "http_proxy": NO_NETWORK,
                "https_proxy": NO_NETWORK, "NO_PROXY": "", "no_proxy": "",
                "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra})
    return env
