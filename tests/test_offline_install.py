"""Installing foldstack with the network blocked, into an environment shaped like a Kaggle image
(tests/kaggle_image.py): from a bundle's wheels, and by the Makefile's kernel set-up."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from foldstack.contracts import bundle_file
from foldstack.stages import bundle
from kaggle_image import make_image, offline_env
from test_bundle import build, trained_tree, wheel

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
        done = run(["foldstack", stage, "--pipeline", "tiny.yaml", "--root", work], work, env)
        assert done.returncode == 0, done.stderr[-2000:]
    assert (work / "artifacts" / "tiny" / "folds.csv").is_file()


def kernel_install(image: Path, folder: Path, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """The kernel script's own install command (foldstack_kernel.py), without ``--quiet``."""
    wheels = folder / bundle_file.WHEELS
    (foldstack,) = wheels.glob("foldstack-*.whl")
    return run([image, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--find-links", wheels,
                "-r", folder / bundle_file.REQUIREMENTS, foldstack], cwd, env)


def test_kernel_install_keeps_what_the_image_has_at_the_pin_and_installs_the_rest(tmp_path: Path, image: Path) -> None:
    """The image holds alpha 1.0 (pinned 1.0) and beta 1.0 (pinned 2.0) and lacks gamma (pinned 1.0);
    with the network blocked, the kernel's install keeps alpha as it is, puts beta at 2.0, installs
    gamma, all from the bundle's wheels; tensorflow (pinned, left out) is neither shipped nor touched."""
    links = tmp_path / "links"
    for name, version in (("alpha", "1.0"), ("beta", "1.0"), ("beta", "2.0"), ("gamma", "1.0")):
        wheel(links, name, version)
    env = offline_env(image)
    done = run([image, "-m", "pip", "install", "--no-index", "--find-links", links, "alpha==1.0", "beta==1.0"],
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
    folder = build(cfg, paths, pipeline_file)
    mounted = tmp_path / "input" / "datasets" / "someone" / "foldstack-tiny"
    shutil.copytree(folder, mounted)
    (lacking,) = (mounted / "wheels").glob("foldstack-*.whl")
    lacking.unlink()
    env = offline_env(image, KAGGLE_KERNEL_RUN_TYPE="Batch", FOLDSTACK_KAGGLE_INPUT=str(tmp_path / "input"))
    done = run([image, paths.kernel / bundle.KERNEL_SCRIPT], tmp_path, env)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"foldstack kernel: error: the bundle {mounted} lacks the wheel wheels/{lacking.name}; "
                                   "build and upload it again")

    shutil.copy2(folder / "wheels" / lacking.name, mounted / "wheels" / lacking.name)
    (mounted / "requirements.txt").write_text("gamma==1.0\n")  # pinned, but no wheel shipped
    done = run([image, paths.kernel / bundle.KERNEL_SCRIPT], tmp_path, env)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"foldstack kernel: error: the bundle {mounted} lacks the wheel of gamma==1.0; "
                                   "build and upload it again")


def test_makefile_kernel_setup_installs_offline(tmp_path: Path, image: Path) -> None:
    """`make setup` in a kernel installs foldstack from the source with no network; without
    `--no-build-isolation` (the old set-up) pip would need the Internet for setuptools."""
    tree = tmp_path / "foldstack"
    tree.mkdir()
    for name in ("Makefile", "pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = offline_env(image, KAGGLE_KERNEL_RUN_TYPE="Interactive")
    root = tmp_path / "working"

    old = run([image, "-m", "pip", "install", "--no-deps", "-e", "."], tree, env)
    assert old.returncode != 0 and "setuptools" in old.stderr  # what the issue reported

    done = run(["make", "-C", tree, "setup", f"PYTHON={image}", f"ROOT={root}"], tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / ".foldstack-installed").is_file()
    where = run([image, "-c", "import foldstack; print(foldstack.__file__)"], tmp_path, env).stdout.strip()
    assert where == str(tree / "src" / "foldstack" / "__init__.py")
