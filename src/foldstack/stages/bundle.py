"""The `bundle` stage: one folder to upload as a single Kaggle dataset, from which an offline
kernel installs foldstack and predicts a hidden test set; and beside it the kernel that does so.

``bundle/<pipeline>/`` holds:

* ``wheels/``: the foldstack wheel and, for each Python the kernel may run (:data:`KAGGLE_PYTHON`
  unless told), the wheels of every requirement ``requirements.txt`` pins (but those of
  :data:`LEAVE_OUT`) and of their own dependencies;
* ``requirements.txt``: those pins, for the kernel's ``pip install -r``, which keeps each one the
  image already has at the pin and installs the others from ``wheels/``;
* ``pipeline.yaml``: the pipeline, as written;
* ``artifacts/<pipeline>/``: ``folds.csv`` and ``classes.json``, ``models/`` (each fold's best weights, ``done.json``,
  log and the model's manifest; no ``backup-*``, ``features/`` or per-phase weights), ``oof/`` and
  ``stack/`` (the chosen candidate and the fitted level-two model);
* ``weights/keras/``, ``weights/foldstack/``: the ImageNet weight files the models load;
  ``weights/hub/<key>/``: each hub backbone's preset folder (``backbones.hub``);
* ``foldstack-bundle.json`` (:mod:`foldstack.contracts.bundle_file`) and ``dataset-metadata.json``.

``kernel/<pipeline>/`` holds ``foldstack_kernel.py`` and ``kernel-metadata.json`` (Internet off,
the bundle and the competition attached, the image pinned), for ``make kernel-push``.
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

from foldstack.backbones import hub
from foldstack.backbones.pretrained import FOLDSTACK, HUB, KERAS
from foldstack.contracts import bundle_file, fold_done, folds_file, manifest, predictions
from foldstack.core.config import ModelConfig, PipelineConfig
from foldstack.core.errors import DataError, FoldstackError, one_line
from foldstack.core.files import atomic_dir, write_json, write_text
from foldstack.core.paths import Paths, user_cache
from foldstack.data.kaggle import OWNER_PLACEHOLDER
from foldstack.runtime import isolate
from foldstack.training.fold_task import BEST, members, trained_fold_dirs

log = logging.getLogger(__name__)

KERNEL_SCRIPT = "foldstack_kernel.py"
#: The Python of Kaggle's notebook image, the one the wheels are chosen for unless ``--python``
#: says otherwise: 3.12 since December 2025 (Kaggle/docker-python, "Upgrade to Python 3.12").
#: Colab's base, which Kaggle's image follows, moved to 3.13 in August 2026; until Kaggle's does,
#: ``--python 3.12 --python 3.13`` ships wheels for both. The kernel refuses a bundle built for
#: another Python before it installs anything.
KAGGLE_PYTHON = "3.12"

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
#: that wrote it, and the others are small. KerasHub (hub backbones only) depends on
#: tensorflow-text, hence on a TensorFlow wheel; Kaggle's image ships keras-hub (*unconfirmed*
#: which version), and ``--wheel keras-hub`` ships it at its pin where a kernel needs that one.
LEAVE_OUT = ("tensorflow", "ray", "keras-hub")
#: The platforms the wheels are chosen for: a Kaggle image runs x86-64 Linux with glibc 2.35
#: (Ubuntu 22.04). pip's ``manylinux2014`` alone (glibc 2.17, with 2010 and 1) would miss the
#: wheels built only for a newer glibc (``manylinux_2_28``).
PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)), "manylinux2014_x86_64")


def run(cfg: PipelineConfig, paths: Paths, pipeline_file: Path, owner: str | None = None,
        wheels: tuple[str, ...] = (), find_links: tuple[Path, ...] = (),
        pythons: tuple[str, ...] = (KAGGLE_PYTHON,), requirements: Path | None = None,
        leave_out: tuple[str, ...] = LEAVE_OUT, accelerator: str | None = None) -> Path:
    """Build ``paths.bundle`` and ``paths.kernel``; returns the bundle folder.

    Everything is checked before anything is written, and both folders are built beside their
    place and swapped in whole, so a failed build leaves the previous bundle as it was.

    Args:
        cfg: the pipeline.
        paths: its folders.
        pipeline_file: the YAML ``cfg`` was read from, copied into the bundle.
        owner: the Kaggle user owning the dataset and the kernel (default: filled in at upload).
        wheels: requirement names of ``leave_out`` to ship all the same, at their pins.
        find_links: folders to take the wheels from instead of the package index (and its cache,
            ``user_cache("wheels")/<python>``).
        pythons: the Python versions (``3.12``) the kernel may run, wheels shipped for each.
        requirements: the pins to ship; default this checkout's ``requirements.txt``.
        leave_out: requirement names not shipped (the image has them; see :data:`LEAVE_OUT`).
        accelerator: the kernel's ``machine_shape`` (``NvidiaTeslaT4``, ``TpuV5E8``); default
            Kaggle's default GPU.

    Raises:
        DataError: training or stacking has not finished, or was done with another recipe.
        FoldstackError: a wheel could not be built or fetched.
    """
    started = time.perf_counter()
    pythons = tuple(dict.fromkeys(pythons))
    bad = [python for python in pythons if not re.fullmatch(r"3\.\d{1,2}", python)]
    if bad or not pythons:
        raise FoldstackError(f"--python {bad[0] if bad else '(none)'}: not a Python version such as {KAGGLE_PYTHON}")
    files = _inference_files(cfg, paths)
    owner = owner or OWNER_PLACEHOLDER
    dataset = f"{owner}/{_slug(f'foldstack-{cfg.name}')}"
    with atomic_dir(paths.bundle) as folder:
        shipped, pins = _wheels(folder / bundle_file.WHEELS, requirements or SOURCE_TREE / "requirements.txt",
                                wheels, leave_out, find_links, pythons)
        weights = _pretrained_weights(cfg, folder / bundle_file.WEIGHTS)
        for relative in tqdm(files, desc="bundle", unit="file", disable=None):
            target = folder / bundle_file.ARTIFACTS / cfg.name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(paths.artifacts / relative, target)  # mtimes kept: predict reads them as up to date
        shutil.copy2(pipeline_file, folder / bundle_file.PIPELINE)
        bundle_file.write(folder, {"pipeline": cfg.name, "foldstack": metadata.version("foldstack"),
                                   "pythons": list(pythons), "wheels": shipped, "requirements": pins, "weights": weights,
                                   "seconds_per_image": _paces(cfg, paths)})
        write_json(folder / "dataset-metadata.json", {
            "id": dataset, "title": f"foldstack {cfg.name}"[:50], "licenses": [{"name": "CC0-1.0"}],
            "subtitle": f"foldstack models, wheels and weights for {cfg.name}"[:80],
        })
    _kernel(cfg, paths.kernel, owner, dataset, accelerator)
    size = sum(path.stat().st_size for path in paths.bundle.rglob("*") if path.is_file())
    print(f"bundle: {paths.bundle} ({size / 2**20:.1f} MiB, {len(files)} artifact files, {len(shipped)} wheels, "
          f"{sum(map(len, weights.values()))} weight files) in {time.perf_counter() - started:.1f} s")
    print(f"kernel: {paths.kernel} (attach dataset {dataset})")
    return paths.bundle


# --- what inference needs ---------------------------------------------------------------------


def _inference_files(cfg: PipelineConfig, paths: Paths) -> list[Path]:
    """The artifact files the kernel needs, relative to ``paths.artifacts``, once checked complete
    and trained by the pipeline's recipe: the kernel's ``predict`` refuses any other fold."""
    art = paths.artifacts
    if not paths.folds.is_file():
        raise DataError(f"{paths.folds}: not found; run `make folds` and `make train` before `make bundle`")
    classes = folds_file.classes_path(paths.folds)
    if not classes.is_file():
        raise DataError(f"{classes}: not found; run `make folds` and `make train` before `make bundle`")
    folds_digest = folds_file.digest(folds_file.read(paths.folds, cfg.folds.k), folds_file.read_classes(paths.folds, cfg),
                                     folds_file.read_extra(paths.folds))
    files = [paths.folds.relative_to(art), classes.relative_to(art)]
    if folds_file.extra_path(paths.folds).is_file():  # part of the folds' digest, so of every fold's recipe
        files.append(folds_file.extra_path(paths.folds).relative_to(art))
    for model in cfg.models:
        model_dir = paths.models / model.name
        for run in members(model, cfg.folds.k, cfg.seed):
            fold_dir = model_dir / run.name
            if not fold_done.exists(fold_dir) or not (fold_dir / BEST).is_file():
                raise DataError(f"{fold_dir}: fold not finished (no {fold_done.NAME} or best.weights.h5); "
                                "run `make train` before `make bundle`")
        if not (model_dir / manifest.NAME).is_file():
            raise DataError(f"{model_dir / manifest.NAME}: not found; run `make train` before `make bundle`")
        changed = _changed_since_training(cfg, model, manifest.read(model_dir))
        if changed:
            raise DataError(f"{model_dir / manifest.NAME}: model {model.name!r} was trained with another recipe "
                            f"({', '.join(changed)} differ from the pipeline); run `make train` again")
        try:
            trained_fold_dirs(cfg, paths.models, model, folds_digest)  # each fold's fingerprint, as predict checks it
        except DataError as error:
            # The manifest's recipe is the pipeline's: of what a fingerprint holds, the folds (their
            # rows and their class order, classes.json) are left.
            raise DataError(f"{paths.folds}: the folds or their class order changed since model {model.name!r} "
                            f"was trained ({error})") from None
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


def _changed_since_training(cfg: PipelineConfig, model: ModelConfig, trained: dict) -> list[str]:
    """The keys of a fold's recipe (the model, the augmentation views, the task, metric and seed)
    whose value in the model's manifest differs from the pipeline's, e.g. ``['augment.tta']``."""
    now = {"model": model.model_dump(mode="json"), "pipeline": cfg.model_dump(mode="json")}
    then = {"model": trained.get("model", {}), "pipeline": trained.get("pipeline", {})}
    keys = [("model", key) for key in now["model"].keys() | then["model"].keys()]
    keys += [("pipeline", key) for key in ("task", "metric", "seed")]
    keys += [("pipeline", "augment", key) for key in now["pipeline"]["augment"]]
    changed = []
    for key in keys:
        old, new = then, now
        for part in key:
            old, new = (old or {}).get(part), (new or {}).get(part)
        if old != new:
            changed.append(".".join(key[1:]))
    return sorted(changed)


def _paces(cfg: PipelineConfig, paths: Paths) -> dict[str, float | None]:
    """Seconds per test image each model took at ``predict`` (None where never measured): the
    kernel projects its run time from them."""
    return {model.name: predictions.read_pace(paths.test / f"{model.name}.parquet") for model in cfg.models}


def _excluded(relative: Path) -> bool:
    return any(fnmatch(part, pattern) for part in relative.parts for pattern in NOT_FOR_INFERENCE)


def _pretrained_weights(cfg: PipelineConfig, folder: Path) -> dict[str, list[str]]:
    """Copy the ImageNet weight files the models load, and every hub backbone's preset files, into
    ``folder/<kind>/``; their names by kind."""
    found: dict[str, list[str]] = {KERAS: [], FOLDSTACK: []}
    for model in cfg.models:
        # A hub preset ships whatever the weights: its config is the architecture.
        if model.weights != "imagenet" and not hub.is_hub(model.backbone):
            continue
        # Building the backbone needs Keras: in a child, as training does.
        for kind, path in isolate.call(f"{PRETRAINED}:imagenet_files", model.backbone,
                                       model.image_size):
            name = hub.bundled_name(model.backbone, path) if kind == HUB else Path(path).name
            if name not in found.setdefault(kind, []):
                (folder / kind / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, folder / kind / name)
                found[kind].append(name)
    return found


# --- wheels -----------------------------------------------------------------------------------


def _wheels(folder: Path, requirements: Path, also: tuple[str, ...], leave_out: tuple[str, ...],
            find_links: tuple[Path, ...], pythons: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The foldstack wheel, and those of the pins of ``requirements`` but ``leave_out`` (less
    ``also``) with their dependencies for each of ``pythons``, in ``folder``; their file names,
    and the pins shipped.

    The dependencies come too (pip resolves them for the kernel's Python and platform): a pinned
    requirement newer than the image's may need newer dependencies than the image has. The
    kernel's ``pip install -r`` takes from ``wheels/`` only what the image does not satisfy, and
    of several wheels of one pin the one for its own Python.
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
    for python in pythons:
        if shipped:
            _download(shipped, python, folder, find_links)
        names = [path.name for path in folder.glob("*.whl")]
        for pin in shipped:  # pip found another version's wheel, or none: say so here, not in the kernel
            if not any(bundle_file.wheel_pin(name) == bundle_file.normal_pin(pin)
                       and bundle_file.wheel_fits(name, python) for name in names):
                raise FoldstackError(f"pip fetched no wheel of {pin} for Python {python} into {folder}")
    return sorted(path.name for path in folder.glob("*.whl")), shipped


def _download(pins: list[str], python: str, folder: Path, find_links: tuple[Path, ...]) -> None:
    """``pins`` and their dependencies as wheels for CPython ``python`` on a Kaggle image, into ``folder``.

    From ``find_links`` where given; else from the cache ``user_cache("wheels")/<python>``, which
    the package index fills first with what it lacks, so a second bundle of the same pins
    downloads nothing.
    """
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    wanted = ("download", "--only-binary=:all:", "--python-version", python, "--implementation", "cp", *platforms)
    what = f"wheels for Python {python}"
    if find_links:
        index = [arg for link in find_links for arg in ("--no-index", "--find-links", str(link))]
        _pip(*wanted, "--dest", str(folder), *dict.fromkeys(index), *pins, what=what)
        return
    cache = user_cache("wheels") / python
    offline = (*wanted, "--no-index", "--find-links", str(cache), "--dest", str(folder), *pins)
    try:
        _pip(*offline, what=what)
        return
    except FoldstackError:
        log.info("fetching %s into %s", what, cache)
    cache.mkdir(parents=True, exist_ok=True)
    # Fetched beside the cache, then each file renamed in: a cached wheel is never half written.
    with tempfile.TemporaryDirectory(prefix=".fetching-", dir=cache) as tmp:
        _pip(*wanted, "--dest", tmp, *pins, what=what)
        for path in Path(tmp).glob("*.whl"):
            path.replace(cache / path.name)
    _pip(*offline, what=what)


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
    """Kaggle's slug of a title (as the client's ``slugify``, for ASCII): lowercased, dashes between words."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:TITLE_LENGTH]


#: The longest title whose slug Kaggle keeps whole as the kernel's id (assumed: Kaggle's kernel
#: and dataset slugs are cut at 50 characters).
TITLE_LENGTH = 50


def kernel_title(pipeline: str) -> str:
    """The inference kernel's title, short enough that its slug is the kernel's id in full: the
    client warns, and Kaggle names the kernel otherwise, when the id is not the title's slug."""
    for title in (f"foldstack {pipeline} inference", f"{pipeline} inference"):
        if len(title) <= TITLE_LENGTH:
            return title
    return f"{pipeline[:TITLE_LENGTH - len(' inference')].rstrip('-_. ')} inference"


# --- the kernel -------------------------------------------------------------------------------


def _kernel(cfg: PipelineConfig, folder: Path, owner: str, dataset: str, accelerator: str | None = None) -> None:
    """Write the kernel's script and ``kernel-metadata.json`` into ``folder`` (as a whole)."""
    title = kernel_title(cfg.name)
    source = cfg.data.source
    shape = (accelerator or "").lower()
    with atomic_dir(folder) as tmp:
        write_text(tmp / KERNEL_SCRIPT, KERNEL_TEMPLATE.replace("{BUNDLE_FILE}", bundle_file.NAME))
        write_json(tmp / "kernel-metadata.json", {
            "id": f"{owner}/{_slug(title)}", "title": title, "code_file": KERNEL_SCRIPT,
            "language": "python", "kernel_type": "script", "is_private": True,
            "enable_gpu": not accelerator or shape.startswith("nvidia"), "enable_tpu": shape.startswith("tpu"),
            **({"machine_shape": accelerator} if accelerator else {}),
            "enable_internet": False,  # code competitions score only kernels with Internet off
            # The image the kernel first ran on, for every later version: a push never lands on
            # a newer image whose packages the bundle was not built for.
            "docker_image_pinning_type": "original",
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
    record = json.loads((bundle / BUNDLE_FILE).read_text(encoding="utf-8"))
    # Before pip: wheels of another Python would fail to install, one by one, with pip's words.
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here not in record.get("pythons", []):
        built = ", ".join(record.get("pythons") or [record.get("python", "another Python")])
        fail(f"bundle built for {built}, this kernel runs {here}: rebuild with --python {here}")
    names = record["wheels"]
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
