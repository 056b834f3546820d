"""The `bundle` stage: one folder to upload as a single Kaggle dataset, from which an offline
kernel installs foldstack and predicts a hidden test set; and beside it the kernel that does so.

``bundle/<pipeline>/`` holds:

* ``wheels/``: the foldstack wheel, and the wheels of the requirements named with ``wheels``
  (those a Kaggle image lacks or has at an incompatible version), for the kernel's Python;
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
from foldstack.contracts import bundle_file, fold_done, manifest
from foldstack.core.config import PipelineConfig
from foldstack.core.errors import DataError, FoldstackError, one_line
from foldstack.core.files import atomic_dir, write_json, write_text
from foldstack.core.paths import Paths
from foldstack.data.kaggle import OWNER_PLACEHOLDER
from foldstack.runtime import isolate

log = logging.getLogger(__name__)

KERNEL_SCRIPT = "foldstack_kernel.py"
#: The source tree this foldstack runs from: src/foldstack/stages/bundle.py -> the repository.
SOURCE_TREE = Path(__file__).resolve().parents[3]
#: Files of a fold folder that inference never reads: resume points and per-phase checkpoints.
NOT_FOR_INFERENCE = ("backup-*", "features", "phase-*", ".*")


def run(cfg: PipelineConfig, paths: Paths, pipeline_file: Path, owner: str | None = None,
        wheels: tuple[str, ...] = (), find_links: tuple[Path, ...] = (), python: str | None = None) -> Path:
    """Build ``paths.bundle`` and ``paths.kernel``; returns the bundle folder.

    Everything is checked before anything is written, and both folders are built beside their
    place and swapped in whole, so a failed build leaves the previous bundle as it was.

    Args:
        cfg: the pipeline.
        paths: its folders.
        pipeline_file: the YAML ``cfg`` was read from, copied into the bundle.
        owner: the Kaggle user owning the dataset and the kernel (default: filled in at upload).
        wheels: requirement names to ship as wheels too, at the version ``requirements.txt`` pins.
        find_links: folders to take those wheels from instead of the package index.
        python: the kernel's Python version (``3.11``) the wheels are chosen for; default this one.

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
        shipped = _wheels(folder / bundle_file.WHEELS, wheels, find_links, python)
        weights = _pretrained_weights(cfg, folder / bundle_file.WEIGHTS)
        for relative in tqdm(files, desc="bundle", unit="file", disable=None):
            target = folder / bundle_file.ARTIFACTS / cfg.name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(paths.artifacts / relative, target)  # mtimes kept: predict reads them as up to date
        shutil.copy2(pipeline_file, folder / bundle_file.PIPELINE)
        bundle_file.write(folder, {"pipeline": cfg.name, "foldstack": metadata.version("foldstack"),
                                   "python": python, "wheels": shipped, "weights": weights})
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
        for fold in range(cfg.folds.k):
            fold_dir = model_dir / f"fold{fold}"
            if not fold_done.exists(fold_dir) or not (fold_dir / "best.weights.h5").is_file():
                raise DataError(f"{fold_dir}: fold not finished (no {fold_done.NAME} or best.weights.h5); "
                                "run `make train` before `make bundle`")
        if not (model_dir / manifest.NAME).is_file():
            raise DataError(f"{model_dir / manifest.NAME}: not found; run `make train` before `make bundle`")
        trained = manifest.read(model_dir)["model"]
        if trained != model.model_dump(mode="json"):
            changed = sorted(key for key in trained.keys() | model.model_dump().keys()
                             if trained.get(key) != model.model_dump(mode="json").get(key))
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


def _excluded(relative: Path) -> bool:
    return any(fnmatch(part, pattern) for part in relative.parts for pattern in NOT_FOR_INFERENCE)


def _pretrained_weights(cfg: PipelineConfig, folder: Path) -> dict[str, list[str]]:
    """Copy the ImageNet weight files the models load into ``folder/<kind>/``; their names by kind."""
    found: dict[str, list[str]] = {KERAS: [], FOLDSTACK: []}
    for model in cfg.models:
        if model.weights != "imagenet":
            continue
        # Building the backbone needs Keras: in a child, as training does.
        for kind, path in isolate.call("foldstack.backbones.pretrained:imagenet_files", model.backbone,
                                       model.image_size):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            if Path(path).name not in found[kind]:
                shutil.copy2(path, folder / kind / Path(path).name)
                found[kind].append(Path(path).name)
    return found


# --- wheels -----------------------------------------------------------------------------------


def _wheels(folder: Path, names: tuple[str, ...], find_links: tuple[Path, ...], python: str) -> list[str]:
    """The foldstack wheel and those of ``names`` in ``folder``; their file names."""
    folder.mkdir(parents=True)
    _foldstack_wheel(folder)
    if names:
        pins = _pins(SOURCE_TREE / "requirements.txt")
        unknown = [name for name in names if _normal(name) not in pins]
        if unknown:
            raise FoldstackError(f"--wheel {unknown[0]}: not a requirement in {SOURCE_TREE / 'requirements.txt'}")
        index = [arg for link in find_links for arg in ("--no-index", "--find-links", str(link))]
        _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python, "--dest", str(folder),
             *dict.fromkeys(index), *(pins[_normal(name)] for name in names), what=f"wheels for Python {python}")
    return sorted(path.name for path in folder.glob("*.whl"))


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


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


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
import subprocess
import sys
from pathlib import Path

BUNDLE_FILE = "{BUNDLE_FILE}"


def fail(message):
    sys.exit(f"foldstack kernel: error: {message}")


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
    # --no-index: nothing comes from the Internet; --no-build-isolation: nothing is built.
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-index", "--no-build-isolation", "--find-links", str(wheels),
                           *(str(wheels / name) for name in names)], capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        fail(f"installing foldstack from {wheels} offline failed: {lines[0] if lines else done.returncode}")
    sys.exit(subprocess.call([sys.executable, "-m", "foldstack.cli", "kernel", "--bundle", str(bundle)]))


if __name__ == "__main__":
    main()
'''
