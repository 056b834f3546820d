"""Installing foldstack with no route out, into an environment of the Kaggle image's published
versions (tests/kaggle_image.py): from a bundle's wheels, and by the Makefile's kernel set-up."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from foldstack.contracts import bundle_file
from foldstack.stages import bundle
from kaggle_image import add_pytest, make_image, offline, offline_env, pins
from test_bundle import HERE, build, trained_tree, wheel

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "task": "multiclass", "metric": "accuracy",
        "data": {"source": {"type": "embedded", "dataset": "digits", "limit": 60}},
        "folds": {"k": 2, "seed": 0},
        "models": [{"name": "m", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "scratch"}]}


def run(command: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "image")


def test_bundle_wheels_install_offline_and_foldstack_runs_from_them(tmp_path: Path, image: Path) -> None:
    cfg, paths, pipeline_file = trained_tree(tmp_path / "trained")
    folder = build(cfg, paths, pipeline_file)
    env = offline_env(image)
    work = tmp_path / "work"
    work.mkdir()
    assert run([image, "-c", "import foldstack"], work, env).returncode == 1  # the image lacks it

    done = kernel_install(image, folder, work, env)
    assert done.returncode == 0, done.stderr
    where = run([image, "-c", "import foldstack; print(foldstack.__file__)"], work, env).stdout
    assert where.startswith(str(image.parents[1])) and "site-packages" in where  # the wheel, not this checkout

    assert run(["foldstack", "--help"], work, env).returncode == 0
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    for stage in ("download", "folds"):
        done = run(offline(["foldstack", stage, "--pipeline", "tiny.yaml", "--root", work]), work, env)
        assert done.returncode == 0, done.stderr[-2000:]
    assert (work / "artifacts" / "tiny" / "folds.csv").is_file()


def kernel_install(image: Path, folder: Path, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """The kernel script's own install command (foldstack_kernel.py), without ``--quiet``."""
    wheels = folder / bundle_file.WHEELS
    (foldstack,) = wheels.glob("foldstack-*.whl")
    return run(offline([image, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--find-links", wheels,
                        "-r", folder / bundle_file.REQUIREMENTS, foldstack]), cwd, env)


def test_kernel_install_keeps_what_the_image_has_at_the_pin_and_installs_the_rest(tmp_path: Path, image: Path) -> None:
    """The image holds alpha 1.0 (pinned 1.0) and beta 1.0 (pinned 2.0) and lacks gamma (pinned 1.0);
    with the network blocked, the kernel's install keeps alpha as it is, puts beta at 2.0, installs
    gamma, all from the bundle's wheels; tensorflow (pinned, left out) is neither shipped nor touched."""
    links = tmp_path / "links"
    for name, version in (("alpha", "1.0"), ("beta", "1.0"), ("beta", "2.0"), ("gamma", "1.0")):
        wheel(links, name, version)
    env = offline_env(image)
    done = run(offline([image, "-m", "pip", "install", "--no-index", "--find-links", links, "alpha==1.0", "beta==1.0"]),
               tmp_path, env)
    assert done.returncode == 0, done.stderr
    site = Path(run([image, "-c", "import alpha; print(alpha.__file__)"], tmp_path, env).stdout.strip()).parent
    alpha_before = (site / "alpha-1.0.dist-info" / "RECORD").stat()
    tensorflow = run([image, "-c", "import importlib.metadata as m; print(m.version('tensorflow'))"], tmp_path, env)

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("alpha==1.0\nbeta==2.0\ngamma==1.0\ntensorflow==9.9\n")
    cfg, paths, pipeline_file = trained_tree(tmp_path / "trained")
    folder = build(cfg, paths, pipeline_file, requirements=requirements, find_links=(links,))
    assert (folder / "requirements.txt").read_text() == "alpha==1.0\nbeta==2.0\ngamma==1.0\n"

    done = kernel_install(image, folder, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "Requirement already satisfied: alpha==1.0" in done.stdout
    installed = next(line for line in done.stdout.splitlines() if line.startswith("Successfully installed"))
    assert sorted(installed.split()[2:]) == ["beta-2.0", "foldstack-0.1.0", "gamma-1.0"]  # alpha is not among them
    versions = run([image, "-c", "import alpha, beta, gamma; print(alpha.VERSION, beta.VERSION, gamma.VERSION)"],
                   tmp_path, env)
    assert versions.stdout.split() == ["1.0", "2.0", "1.0"]
    assert (site / "alpha-1.0.dist-info" / "RECORD").stat().st_mtime_ns == alpha_before.st_mtime_ns  # not reinstalled
    assert run([image, "-c", "import importlib.metadata as m; print(m.version('tensorflow'))"], tmp_path,
               env).stdout == tensorflow.stdout


def test_kernel_script_names_the_wheel_its_bundle_lacks(tmp_path: Path, image: Path) -> None:
    cfg, paths, pipeline_file = trained_tree(tmp_path / "trained")
    folder = build(cfg, paths, pipeline_file, pythons=(HERE,))  # the image here runs this Python
    mounted = tmp_path / "input" / "datasets" / "someone" / "foldstack-tiny"
    shutil.copytree(folder, mounted)
    (lacking,) = (mounted / "wheels").glob("foldstack-*.whl")
    lacking.unlink()
    env = offline_env(image, KAGGLE_KERNEL_RUN_TYPE="Batch", FOLDSTACK_KAGGLE_INPUT=str(tmp_path / "input"))
    done = run(offline([image, paths.kernel / bundle.KERNEL_SCRIPT]), tmp_path, env)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"foldstack kernel: error: the bundle {mounted} lacks the wheel wheels/{lacking.name}; "
                                   "build and upload it again")

    shutil.copy2(folder / "wheels" / lacking.name, mounted / "wheels" / lacking.name)
    (mounted / "requirements.txt").write_text("gamma==1.0\n")  # pinned, but no wheel shipped
    done = run(offline([image, paths.kernel / bundle.KERNEL_SCRIPT]), tmp_path, env)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"foldstack kernel: error: the bundle {mounted} lacks the wheel of gamma==1.0; "
                                   "build and upload it again")


def test_makefile_kernel_setup_installs_offline(tmp_path: Path, image: Path) -> None:
    """`make setup` in a kernel, with no route out: the pins the image lacks (gamma) or holds at
    another version (beta) come from a wheels folder under the input mount, one line each; alpha
    (at its pin) and tensorflow (the image's own) are left as they are; foldstack is installed
    from the source tree. Without `--no-build-isolation` pip would need the Internet for setuptools."""
    tree = tmp_path / "foldstack"
    tree.mkdir()
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    links = tmp_path / "input" / "datasets" / "someone" / "foldstack-tiny" / "wheels"
    for name, version in (("alpha", "1.0"), ("beta", "1.0"), ("beta", "2.0"), ("gamma", "1.0")):
        wheel(links, name, version)
    env = offline_env(image, KAGGLE_KERNEL_RUN_TYPE="Interactive", FOLDSTACK_KAGGLE_INPUT=str(tmp_path / "input"))
    assert run(offline([image, "-m", "pip", "install", "--no-index", "--find-links", links, "alpha==1.0", "beta==1.0"]),
               tmp_path, env).returncode == 0
    tensorflow = run([image, "-c", "import importlib.metadata as m; print(m.version('tensorflow'))"], tmp_path, env)
    (tree / "requirements.txt").write_text("alpha==1.0\nbeta==2.0\ngamma==1.0\ntensorflow==9.9\n")
    root = tmp_path / "working"

    old = run(offline([image, "-m", "pip", "install", "--no-deps", "-e", "."]), tree, env)
    assert old.returncode != 0 and "setuptools" in old.stderr  # what the issue reported

    done = run(offline(["make", "-C", tree, "setup", f"PYTHON={image}", f"ROOT={root}"]), tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    said = [line for line in done.stdout.splitlines() if line.startswith("kernel set-up:")]
    assert said == [
        "kernel set-up: beta 2.0 pinned, 1.0 in the image: installing 2.0",
        "kernel set-up: gamma 1.0 pinned, not in the image: installing 1.0",
        f"kernel set-up: tensorflow 9.9 pinned, {tensorflow.stdout.strip()} in the image: kept (the image's own build)",
        f"kernel set-up: installing 2 from {links}",
    ]
    versions = run([image, "-c", "import alpha, beta, gamma; print(alpha.VERSION, beta.VERSION, gamma.VERSION)"],
                   tmp_path, env)
    assert versions.stdout.split() == ["1.0", "2.0", "1.0"]
    assert run([image, "-c", "import importlib.metadata as m; print(m.version('tensorflow'))"], tmp_path,
               env).stdout == tensorflow.stdout
    assert (root / ".foldstack-installed").is_file()
    where = run([image, "-c", "import foldstack; print(foldstack.__file__)"], tmp_path, env).stdout.strip()
    assert where == str(tree / "src" / "foldstack" / "__init__.py")
    # The image lacks iterative-stratification: every command still starts.
    assert run([image, "-c", "import iterstrat"], tmp_path, env).returncode == 1
    assert run(offline([image, "-m", "foldstack.cli", "--help"]), tmp_path, env).returncode == 0


def test_foldstack_starts_without_iterative_stratification_and_names_it_where_needed(tmp_path: Path) -> None:
    """Every command imports data/splits.py; only multilabel stratified folds need the package."""
    code = ("import sys; sys.modules['iterstrat'] = None; import foldstack.cli, pandas as pd\n"
            "from foldstack.data import splits\n"
            "try:\n"
            "    splits._multilabel_kfold(2, 0)\n"
            "except Exception as error:\n"
            "    print(type(error).__name__, error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ("FoldstackError multilabel stratified folds need the package "
                                   "iterative-stratification (pip install iterative-stratification, or `make setup`)")


def test_pyproject_declares_python_and_dependencies_the_published_image_satisfies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert SpecifierSet(project["requires-python"]) == SpecifierSet(">=3.11")
    image = {canonicalize_name(pin.split("==")[0]): Version(pin.split("==")[1]) for pin in pins()}
    for dependency in map(Requirement, project["dependencies"]):
        name = canonicalize_name(dependency.name)
        assert name in image, f"{name}: a dependency the Kaggle image lacks"
        assert dependency.specifier.contains(image[name]), f"{dependency}: the image holds {image[name]}"
    assert "tensorflow" not in {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}


#: Test modules run again on the published image's versions (deselected: the two that need
#: iterative-stratification, which the image lacks; tests/test_offline_install.py checks its message).
ON_THE_IMAGE = ("test_kaggle.py", "test_splits.py", "test_stack.py", "test_submit.py", "test_metrics.py")
NEEDS_ITERSTRAT = "not multilabel_folds_balance and not multilabel_labels_rarer"
#: Deselected there too: pushing a kernel, which a user does from their own machine with the pinned
#: client (kaggle 2.0.2 cannot read a dataset's version number: `kernel-push` says so in one line,
#: test_kaggle.py::test_a_client_that_cannot_read_a_dataset_version_is_refused_in_one_line, run there).
PUSHES = "not push and not rate_limit"


def test_the_library_on_the_published_image(tmp_path: Path, image: Path) -> None:
    """The Kaggle client (download, submit, publish, push against the loopback stand-in), folds,
    stacking, submissions and metrics on kaggle 2.0.2 (no ``unzip`` for a competition's download,
    no upload-failed constant), scikit-learn 1.6.1 (``StratifiedGroupKFold(shuffle=True)`` does
    not stratify), LightGBM 4.6 and pandas 2.2."""
    add_pytest(image)
    env = {**offline_env(image), "PYTHONPATH": str(REPO / "src")}
    done = run(offline([image, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-k", f"{NEEDS_ITERSTRAT} and {PUSHES}",
                        *(REPO / "tests" / name for name in ON_THE_IMAGE)]), REPO, env)
    assert done.returncode == 0, done.stdout[-4000:]
    versions = run([image, "-c", "import importlib.metadata as m; print(*(m.version(n) for n in "
                                 "('kaggle', 'scikit-learn', 'lightgbm', 'pandas')))"], tmp_path, env)
    assert versions.stdout.split() == ["2.0.2", "1.6.1", "4.6.0", "2.2.2"]
