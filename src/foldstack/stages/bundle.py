"""The `bundle` stage: one folder to upload as a single Kaggle dataset, from which an offline
kernel installs foldstack and predicts a hidden test set; and beside it the kernel that does so.

``bundle/<pipeline>/`` holds:

* ``wheels/``: the foldstack wheel and, for the kernel's Python, the wheels of every requirement
  ``requirements.txt`` pins (but those of :data:`LEAVE_OUT`) and of their own dependencies;
* ``requirements.txt``: those pins, for the kernel's ``pip install -r``, which keeps each one the
  image already has at the pin and installs the others from ``wheels/``;
* ``pipeline.yaml``: the pipeline, as written;
* ``artifacts/<pipeline>/``: ``folds.csv``, ``models/`` (each fold's best weights, ``done.json``,
  log and the model's manifest; no ``backup-*``, ``features/`` or per-phase weights), ``oof/`` and
  ``stack/`` (the chosen candidate and the fitted level-two model);
* ``weights/keras/``, ``weights/foldstack/``: the ImageNet weight files the models load;
* ``foldstack-bundle.json`` (:mod:`foldstack.contracts.bundle_file`) and ``dataset-metadata.json``.

``kernel/<pipeline>/`` holds ``foldstack_kernel.py`` and ``kernel-metadata.json`` (Internet off,
the bundle and the competition attached), for ``make kernel-push``.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path

from tqdm.auto import tqdm

from foldstack.backbones.pretrained import FOLDSTACK, KERAS
from foldstack.contracts import bundle_file, fold_done, manifest, predictions
from foldstack.core.config import PipelineConfig
from foldstack.core.errors import DataError, FoldstackError, one_line
from foldstack.core.files import atomic_dir, write_json, write_text
from foldstack.core.paths import Paths
from foldstack.data.kaggle import OWNER_PLACEHOLDER
from foldstack.runtime import isolate
from foldstack.training.fold_task import BEST, members

log = logging.getLogger(__name__)

KERNEL_SCRIPT = "foldstack_kernel.py"

#: Where the ImageNet files a backbone reads are found: a child's work, as it builds the backbone.
PRETRAINED = isolate.child_module("foldstack.backbones.pretrained")
#: The source tree this foldstack runs from: src/foldstack/stages/bundle.py -> the repository.
SOURCE_TREE = Path(__file__).resolve().parents[3]
#: Files of a fold folder that inference never reads: resume points and per-phase checkpoints.
NOT_FOR_INFERENCE = ("backup-*", "features", "phase-*", ".*")
#: Requirements the bundle leaves out unless named with ``wheels`` (``foldstack bundle --wheel``):
#: a Kaggle GPU image carries them and foldstack needs no particular version of them. TensorFlow's
#: wheel alone is about 600 MB, and the image's build is the one matched to its CUDA and cuDNN (a
#: PyPI wheel of another version would run on the CPU or bring gigabytes of nvidia-* wheels); Keras
#: 3, shipped at its pin, runs on the image's TensorFlow. Ray (about 70 MB) runs folds on a
#: cluster; an inference kernel predicts on its own machine. Everything else is shipped at its pin:
#: the fitted level-two model is a scikit-learn or LightGBM pickle, read back only by the version
#: that wrote it, and the others are small.
LEAVE_OUT = ("tensorflow", "ray")
#: The platforms the wheels are chosen for: a Kaggle image runs x86-64 Linux with glibc 2.35
#: (Ubuntu 22.04). pip's ``manylinux2014`` alone (glibc 2.17, with 2010 and 1) would miss the
#: wheels built only for a newer glibc (``manylinux_2_28``).
PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)), "manylinux2014_x86_64")


def run(cfg: PipelineConfig, paths: Paths, pipeline_file: Path, owner: str | None = None,
        wheels: tuple[str, ...] = (), find_links: tuple[Path, ...] = (), python: str | None = None,
        requirements: Path | None = None, leave_out: tuple[str, ...] = LEAVE_OUT) -> Path:
    """Build ``paths.bundle`` and ``paths.kernel``; returns the bundle folder.

    Everything is checked before anything is written, and both folders are built beside their
    place and swapped in whole, so a failed build leaves the previous bundle as it was.

    Args:
        cfg: the pipeline.
        paths: its folders.
        pipeline_file: the YAML ``cfg`` was read from, copied into the bundle.
        owner: the Kaggle user owning the dataset and the kernel (default: filled in at upload).
        wheels: requirement names of ``leave_out`` to ship all the same, at their pins.
        find_links: folders to take the wheels from instead of the package index.
        python: the kernel's Python version (``3.11``) the wheels are chosen for; default this one.
        requirements: the pins to ship; default this checkout's ``requirements.txt``.
        leave_out: requirement names not shipped (the image has them; see :data:`LEAVE_OUT`).

    Raises:
        DataError: training or stacking has not finished, or was done with another recipe.
        FoldstackError: a wheel could not be built or fetched.
    """
    started = time.perf_counter()
    files = _inference_files(cfg, paths)
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    owner = owner or OWNER_PLACEHOLDER
    dataset = f"{owner}/{_slug(f'foldstack-{cfg.name}')}"
    with atomic_dir(paths.bundle) as folder:
        shipped, pins = _wheels(folder / bundle_file.WHEELS, requirements or SOURCE_TREE / "requirements.txt",
                                wheels, leave_out, find_links, python)
        weights = _pretrained_weights(cfg, folder / bundle_file.WEIGHTS)
        for relative in tqdm(files, desc="bundle", unit="file", disable=None):
            target = folder / bundle_file.ARTIFACTS / cfg.name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(paths.artifacts / relative, target)  # mtimes kept: predict reads them as up to date
        shutil.copy2(pipeline_file, folder / bundle_file.PIPELINE)
        bundle_file.write(folder, {"pipeline": cfg.name, "foldstack": metadata.version("foldstack"),
                                   "python": python, "wheels": shipped, "requirements": pins, "weights": weights,
                                   "seconds_per_image": _paces(cfg, paths)})
        write_json(folder / "dataset-metadata.json", {
            "id": dataset, "title": f"foldstack {cfg.name}"[:50], "licenses": [{"name": "CC0-1.0"}],
            "subtitle": f"foldstack models, wheels and weights for {cfg.name}"[:80],
        })
    _kernel(cfg, paths.kernel, owner, dataset)
    size = sum(path.stat().st_size for path in paths.bundle.rglob("*") if path.is_file())
    print(f"bundle: {paths.bundle} ({size / 2**20:.1f} MiB, {len(files)} artifact files, {len(shipped)} wheels, "
          f"{sum(map(len, weights.values()))} weight files) in {time.perf_counter() - started:.1f} s")
    print(f"kernel: {paths.kernel} (attach dataset {dataset})")
    return paths.bundle


# --- what inference needs ---------------------------------------------------------------------


def _inference_files(cfg: PipelineConfig, paths: Paths) -> list[Path]:
    """The artifact files the kernel needs, relative to ``paths.artifacts``, once checked complete."""
    art = paths.artifacts
    if not paths.folds.is_file():
        raise DataError(f"{paths.folds}: not found; run `make folds` and `make train` before `make bundle`")
    files = [paths.folds.relative_to(art)]
    for model in cfg.models:
        model_dir = paths.models / model.name
        for run in members(model, cfg.folds.k, cfg.seed):
            fold_dir = model_dir / run.name
            if not fold_done.exists(fold_dir) or not (fold_dir / BEST).is_file():
                raise DataError(f"{fold_dir}: fold not finished (no {fold_done.NAME} or best.weights.h5); "
                                "run `make train` before `make bundle`")
        if not (model_dir / manifest.NAME).is_file():
            raise DataError(f"{model_dir / manifest.NAME}: not found; run `make train` before `make bundle`")
        trained, wanted = manifest.read(model_dir)["model"], model.model_dump(mode="json")
        if trained != wanted:
            changed = sorted(key for key in trained.keys() | wanted.keys() if trained.get(key) != wanted.get(key))
            raise DataError(f"{model_dir / manifest.NAME}: model {model.name!r} was trained with another recipe "
                            f"({', '.join(changed)} differ from the pipeline); run `make train` again")
        if model.weights not in ("imagenet", "none"):
            log.warning("%s: weights file %s is not bundled; the kernel needs the fold weights only",
                        model.name, model.weights)
        files += [path.relative_to(art) for path in sorted(model_dir.rglob("*"))
                  if path.is_file() and not _excluded(path.relative_to(model_dir))]
    chosen = paths.stack / "chosen.json"
    if not chosen.is_file():
        raise DataError(f"{chosen}: not found; run `make stack` before `make bundle`")
    for folder in (paths.stack, paths.oof):
        files += [path.relative_to(art) for path in sorted(folder.rglob("*"))
                  if path.is_file() and not path.name.startswith(".")]
    return files


def _paces(cfg: PipelineConfig, paths: Paths) -> dict[str, float | None]:
    """Seconds per test image each model took at ``predict`` (None where never measured): the
    kernel projects its run time from them."""
    return {model.name: predictions.read_pace(paths.test / f"{model.name}.parquet") for model in cfg.models}


def _excluded(relative: Path) -> bool:
    return any(fnmatch(part, pattern) for part in relative.parts for pattern in NOT_FOR_INFERENCE)


def _pretrained_weights(cfg: PipelineConfig, folder: Path) -> dict[str, list[str]]:
    """Copy the ImageNet weight files the models load into ``folder/<kind>/``; their names by kind."""
    found: dict[str, list[str]] = {KERAS: [], FOLDSTACK: []}
    for model in cfg.models:
        if model.weights != "imagenet":
            continue
        # Building the backbone needs Keras: in a child, as training does.
        for kind, path in isolate.call(f"{PRETRAINED}:imagenet_files", model.backbone,
                                       model.image_size):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            if Path(path).name not in found[kind]:
                shutil.copy2(path, folder / kind / Path(path).name)
                found[kind].append(Path(path).name)
    return found


# --- wheels -----------------------------------------------------------------------------------


def _wheels(folder: Path, requirements: Path, also: tuple[str, ...], leave_out: tuple[str, ...],
            find_links: tuple[Path, ...], python: str) -> tuple[list[str], list[str]]:
    """The foldstack wheel, and those of the pins of ``requirements`` but ``leave_out`` (less
    ``also``) with their dependencies, in ``folder``; their file names, and the pins shipped.

    The dependencies come too (pip resolves them for the kernel's Python and platform): a pinned
    requirement newer than the image's may need newer dependencies than the image has. The
    kernel's ``pip install -r`` takes from ``wheels/`` only what the image does not satisfy.
    """
    folder.mkdir(parents=True)
    _foldstack_wheel(folder)
    pins = _pins(requirements)
    unknown = [name for name in also if _normal(name) not in pins]
    if unknown:
        raise FoldstackError(f"--wheel {unknown[0]}: not a requirement in {requirements}")
    left = {_normal(name) for name in leave_out} - {_normal(name) for name in also}
    shipped = [pin for name, pin in pins.items() if name not in left]
    loose = [pin for pin in shipped if not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", pin)]
    if loose:
        raise FoldstackError(f"{requirements}: {loose[0]!r} is not pinned (name==version); the kernel installs pins")
    if shipped:
        index = [arg for link in find_links for arg in ("--no-index", "--find-links", str(link))]
        platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        _pip("download", "--only-binary=:all:", "--python-version", python, *platforms, "--dest", str(folder),
             *dict.fromkeys(index), *shipped, what=f"wheels for Python {python}")
    names = sorted(path.name for path in folder.glob("*.whl"))
    have = {bundle_file.wheel_pin(name) for name in names}
    missing = [pin for pin in shipped if bundle_file.normal_pin(pin) not in have]
    if missing:  # pip found another version's wheel name, or none: say so here, not in the kernel
        raise FoldstackError(f"pip fetched no wheel named for {missing[0]} into {folder}")
    return names, shipped


def _foldstack_wheel(folder: Path) -> None:
    """Build foldstack's wheel from a copy of its source tree (a build in place leaves files there)."""
    if not (SOURCE_TREE / "pyproject.toml").is_file():
        raise FoldstackError(f"foldstack runs from {SOURCE_TREE}, not a source tree; run `make bundle` in a checkout")
    with tempfile.TemporaryDirectory(prefix="foldstack-wheel-") as tmp:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(SOURCE_TREE / name, Path(tmp) / name)
        shutil.copytree(SOURCE_TREE / "src", Path(tmp) / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(folder), tmp,
             what="the foldstack wheel")


def _pip(*args: str, what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
                          capture_output=True, text=True)
    if done.returncode:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no message"]
        raise FoldstackError(f"pip could not get {what}: {one_line(last[0])}")


def _pins(requirements: Path) -> dict[str, str]:
    """Requirement name (normalised) -> its line in ``requirements``, e.g. ``keras`` -> ``keras==3.15.1``."""
    pins = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            pins[_normal(re.split(r"[<>=!~\[; ]", line)[0])] = line
    return pins


_normal = bundle_file.normal_name


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50]


# --- the kernel -------------------------------------------------------------------------------


def _kernel(cfg: PipelineConfig, folder: Path, owner: str, dataset: str) -> None:
    """Write the kernel's script and ``kernel-metadata.json`` into ``folder`` (as a whole)."""
    title = f"foldstack {cfg.name} inference"
    source = cfg.data.source
    with atomic_dir(folder) as tmp:
        write_text(tmp / KERNEL_SCRIPT, KERNEL_TEMPLATE.replace("{BUNDLE_FILE}", bundle_file.NAME))
        write_json(tmp / "kernel-metadata.json", {
            "id": f"{owner}/{_slug(title)}", "title": title, "code_file": KERNEL_SCRIPT,
            "language": "python", "kernel_type": "script", "is_private": True,
            "enable_gpu": True, "enable_tpu": False,
            "enable_internet": False,  # code competitions score only kernels with Internet off
            "dataset_sources": [dataset],
            "competition_sources": [source.competition] if source.type == "kaggle_competition" else [],
            "kernel_sources": [], "model_sources": [],
        })


#: The kernel's whole script. It only installs foldstack from the attached bundle, offline, and
#: hands over to ``foldstack kernel``: the work lives in the package (stages/kernel.py).
KERNEL_TEMPLATE = '''"""foldstack inference kernel (written by `make bundle`): install foldstack from the attached
bundle with Internet off, then predict the competition's test set, stack and submit; the
submission is copied to /kaggle/working/submission.csv."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

BUNDLE_FILE = "{BUNDLE_FILE}"


def fail(message):
    sys.exit(f"foldstack kernel: error: {message}")


def pin(name, version):
    return re.sub(r"[-_.]+", "-", name.strip()).lower() + "==" + version.strip()


def find_bundle():
    root = Path(os.environ.get("FOLDSTACK_KAGGLE_INPUT") or "/kaggle/input")
    for depth in range(4):
        found = sorted(root.glob("/".join(["*"] * depth + [BUNDLE_FILE])))
        if found:
            return found[0].parent
    fail(f"no foldstack bundle under {root}; attach the bundle dataset with 'Add Input'")


def main():
    bundle = find_bundle()
    wheels = bundle / "wheels"
    names = json.loads((bundle / BUNDLE_FILE).read_text(encoding="utf-8"))["wheels"]
    missing = [name for name in names if not (wheels / name).is_file()]
    if missing:
        fail(f"the bundle {bundle} lacks the wheel wheels/{missing[0]}; build and upload it again")
    requirements = bundle / "requirements.txt"
    have = {pin(*name.split("-")[:2]) for name in names}
    missing = [line for line in requirements.read_text(encoding="utf-8").split() if pin(*line.split("==")) not in have]
    if missing:
        fail(f"the bundle {bundle} lacks the wheel of {missing[0]}; build and upload it again")
    (foldstack,) = [name for name in names if name.startswith("foldstack-")]
    # --no-index: nothing comes from the Internet; --no-build-isolation: nothing is built. pip keeps
    # each pinned requirement the image already has at its pin and installs the others from wheels/.
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-index", "--no-build-isolation", "--find-links", str(wheels),
                           "-r", str(requirements), str(wheels / foldstack)], capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        fail(f"installing foldstack from {wheels} offline failed: {lines[0] if lines else done.returncode}")
    sys.exit(subprocess.call([sys.executable, "-m", "foldstack.cli", "kernel", "--bundle", str(bundle)]))


if __name__ == "__main__":
    main()
'''
