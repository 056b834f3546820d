"""The training engine: every regime trains a fold; the stage writes complete OOF/test files,
skips finished folds and resumes after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from foldstack.core import metrics
from foldstack.core.config import ModelConfig
from foldstack.data import tables
from foldstack.stages import train
from foldstack.training.callbacks import AtomicBackupAndRestore
from foldstack.training.features import FeatureCache
from foldstack.training.fold_task import FoldTask
from foldstack.training.regimes import REGIMES, fit, trained_network, tta_predictor

from conftest import TINY, make_config
from procs import descendants, running

# A small real backbone keeps each regime's test to seconds; the registry test covers the others.
MODEL = {"name": "m", "backbone": "small_cnn", "weights": "none", "image_size": 16, "epochs": 2,
         "head_epochs": 1, "batch_size": 32, "dense_units": [16]}

#: Where ``model_config`` cuts a ``partial`` model (``cut_layer`` cuts every regime that sets it).
PARTIAL_CUT = "block1_pool"


def model_config(**fields) -> ModelConfig:
    """``MODEL`` with ``fields`` replaced, validated as a pipeline's model; a ``partial`` one cut
    at :data:`PARTIAL_CUT` unless ``fields`` say where."""
    if fields.get("regime") == "partial":
        fields = {"cut_layer": PARTIAL_CUT, **fields}
    return make_config(models=[{**MODEL, **fields}]).models[0]


def fold_task(tiny_digits, tmp_path: Path, model: ModelConfig, fold_dir: Path | None = None,
              **fields) -> tuple[FoldTask, dict[str, np.ndarray]]:
    """Fold 0 of the tiny digits folds for ``model``, on random images cached in ``tmp_path``:
    the task (its ``fold_dir`` created) and the image arrays. ``fields`` replace the task's own."""
    cfg, paths = tiny_digits
    trainer = train.Trainer(cfg, paths, workers=1)
    size = model.image_size
    rng = np.random.default_rng(0)
    images, caches = {}, {}
    n_test = len(tables.load_test_table(cfg, paths))
    for split, n in (("train", len(trainer.folds)), ("test", n_test)):
        images[split] = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        caches[split] = tmp_path / f"{split}-{size}.npy"
        np.save(caches[split], images[split])
    augment = fields.pop("augment", cfg.augment)
    features = None
    if model.regime == "features":
        features = tmp_path / "features"
        FeatureCache.build(model, images, augment, features, {"train": "k", "test": "k"})
    fold = trainer.folds["fold"].to_numpy()
    task = FoldTask(model=model, task=cfg.task, metric=cfg.metric, y=trainer.y, n_classes=len(trainer.classes),
                    train_index=np.flatnonzero(fold != 0), valid_index=np.flatnonzero(fold == 0),
                    augment=augment, caches=caches, fold_dir=fold_dir or tmp_path / "fold0", seed=0,
                    features=features, **fields)
    task.fold_dir.mkdir(parents=True, exist_ok=True)
    return task, images


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_each_regime_trains_and_predicts(tiny_digits, tmp_path: Path, regime: str) -> None:
    task, images = fold_task(tiny_digits, tmp_path, model_config(regime=regime))
    predict = fit(task, images, metrics.get(task.metric))
    proba = predict("test", np.arange(5))
    assert proba.shape == (5, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    log = pd.read_csv(task.fold_dir / "log.csv")
    assert "val_score" in log.columns and len(log) >= 1
    assert (task.fold_dir / "best.weights.h5").exists()


@pytest.mark.parametrize("regime", ["finetune", "scratch"])
def test_a_backbone_cut_at_cut_layer_trains_and_predicts_from_its_fold_weights(tiny_digits, tmp_path: Path,
                                                                               regime: str) -> None:
    """``cut_layer`` cuts the backbone in the regimes that fine-tune it too (the default's
    EfficientNet-Lite0 trains its first stages alone): the fold's network ends at the cut, and the
    network prediction rebuilds from the fold's weights predicts as the trained one did."""
    task, images = fold_task(tiny_digits, tmp_path, model_config(regime=regime, cut_layer="block1_pool"))
    predict = fit(task, images, metrics.get(task.metric))
    network = trained_network(task, task.fold_dir)
    backbone = next(layer for layer in network.layers if isinstance(layer, keras.Model))
    assert backbone.output.shape[1:] == (8, 8, 32)  # block1_pool at 16 px; the whole small_cnn ends at 4x4x128
    rows = np.arange(5)
    reloaded = tta_predictor(task, network, images)("test", rows)
    np.testing.assert_allclose(reloaded, predict("test", rows), rtol=0, atol=1e-5)


def test_stage_writes_contract_files_and_skips_finished_folds(tiny_digits, capsys) -> None:
    cfg, paths = tiny_digits
    cfg = make_config(models=[{**MODEL, "regime": "features", "epochs": 3}])
    scores = train.run(cfg, paths, workers=1)
    folds = pd.read_csv(paths.folds, dtype={"id": str})
    oof = pd.read_parquet(paths.oof / "m.parquet")
    classes = [str(d) for d in range(10)]
    assert list(oof.columns) == ["id", "fold", *classes]
    assert oof["id"].tolist() == folds["id"].tolist() and (oof["fold"] == folds["fold"]).all()
    assert not paths.test.exists()  # the test set is the predict stage's
    manifest = json.loads((paths.models / "m" / "manifest.json").read_text())
    assert manifest["cv_score"] == pytest.approx(scores["m"])
    assert len(manifest["folds"]) == 2 and "keras" in manifest["versions"]

    capsys.readouterr()
    train.run(cfg, paths, workers=1)
    out = capsys.readouterr().out
    assert "skip m fold 0" in out and "skip m fold 1" in out
    pd.testing.assert_frame_equal(pd.read_parquet(paths.oof / "m.parquet"), oof)

    changed = make_config(models=[{**MODEL, "regime": "features", "epochs": 2}])
    train.run(changed, paths, workers=1)
    assert "skip" not in capsys.readouterr().out  # a new recipe is trained again


@pytest.mark.slow
def test_killed_run_resumes(tmp_path: Path) -> None:
    """SIGKILL `foldstack train` mid-fold, after fold 1 backed up an epoch; the rerun skips the
    finished fold, starts fold 1 at its backed-up epoch (``resumed_from`` in its ``done.json``)
    and completes the OOF."""
    base, args, env = _ready_to_train(tmp_path)
    fold_dir = Path(tmp_path, "artifacts", "tiny", "models", "m")
    backup = AtomicBackupAndRestore(str(fold_dir / "fold1" / "backup-all"))  # the scratch regime's one phase
    process = subprocess.Popen([*base, "train", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    # Wait until fold 0 is done and fold 1 has backed up at least one epoch, then kill mid-fold.
    while not ((fold_dir / "fold0" / "done.json").exists() and (backup.resume_epoch() or 0) >= 1):
        assert process.poll() is None, process.stdout.read().decode()
        assert time.time() < deadline
        time.sleep(0.5)
    helpers = descendants(process.pid)  # the fork server and the fold's own process
    assert helpers, "the fold should train in a process of its own"
    process.send_signal(signal.SIGKILL)
    process.wait()
    _assert_all_end(helpers)  # at once: no orphan goes on writing into fold 1
    assert not (fold_dir / "fold1" / "done.json").exists()
    assert not (tmp_path / "artifacts" / "tiny" / "oof" / "m.parquet").exists()
    epochs_before = _epochs_logged(fold_dir / "fold1")
    backed_up = backup.resume_epoch()  # the epoch a resumed fit starts at
    assert 1 <= backed_up < 6, backed_up

    rerun = subprocess.run([*base, "train", *args], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, (rerun.returncode, rerun.stdout[-2000:], rerun.stderr[-3000:])
    assert "skip m fold 0" in rerun.stdout
    log = pd.read_csv(fold_dir / "fold1" / "log.csv")
    assert log["epoch"].tolist() == list(range(len(log)))  # resumed, no epoch run twice
    assert len(log) >= epochs_before
    assert json.loads((fold_dir / "fold1" / "done.json").read_text())["resumed_from"] == backed_up
    assert json.loads((fold_dir / "fold0" / "done.json").read_text())["resumed_from"] is None
    oof = pd.read_parquet(tmp_path / "artifacts" / "tiny" / "oof" / "m.parquet")
    assert len(oof) == 120 and oof["fold"].nunique() == 2


@pytest.mark.slow
def test_ctrl_c_mid_fold_stops_every_process(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during a fold: exit 130
    with one line, no traceback, and no process left behind."""
    base, args, env = _ready_to_train(tmp_path)
    fold0 = Path(tmp_path, "artifacts", "tiny", "models", "m", "fold0")
    # A terminal's Ctrl-C; SIGINT restored to its default in case this runner ignores it (a
    # process started with SIGINT ignored keeps ignoring it, Python included).
    process = subprocess.Popen([*base, "train", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while _epochs_logged(fold0) < 1:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.2)
    helpers = descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    _assert_all_end(helpers)
    assert not (fold0 / "done.json").exists()


def test_resumed_log_keeps_each_epoch_once(tmp_path: Path) -> None:
    """Killed after epoch 2's row was logged but before its backup: the resumed fit starts at
    epoch 2 again, and the log drops the old row 2 instead of holding it twice."""
    from foldstack.training.callbacks import ResumableCSVLogger

    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,val_score\n0,0.9,0.5\n1,0.5,0.7\n2,0.4,0.8\n")

    class BackedUpToEpoch2:
        def resume_epoch(self) -> int:
            return 2

    logger = ResumableCSVLogger(log, BackedUpToEpoch2(), first_epoch=0)
    logger.on_train_begin()
    logger.on_epoch_end(2, {"loss": 0.3, "val_score": 0.85})
    logger.on_train_end()
    assert pd.read_csv(log)["epoch"].tolist() == [0, 1, 2]
    assert pd.read_csv(log)["loss"].tolist() == [0.9, 0.5, 0.3]


def _ready_to_train(tmp_path: Path) -> tuple[list[str], list[str], dict[str, str]]:
    """A tiny scratch pipeline downloaded and folded in ``tmp_path``: ``(command, args, env)``
    that ``command + ["train"] + args`` trains (6 epochs per fold)."""
    import yaml

    raw = {**TINY, "models": [{**MODEL, "regime": "scratch", "epochs": 6, "patience": 6}]}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "foldstack.cli"]
    args = ["--pipeline", str(tmp_path / "tiny.yaml"), "--root", str(tmp_path)]
    for stage in ("download", "folds"):
        subprocess.run([*base, stage, *args], check=True, env=env, capture_output=True)
    return base, args, env


def _assert_all_end(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.time() + timeout
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if running(pid)]
    assert not alive, f"processes still running after their parent ended: {alive}"


def _epochs_logged(fold_dir: Path) -> int:
    log = fold_dir / "log.csv"
    return max(0, len(log.read_text().splitlines()) - 1) if log.exists() else 0


def test_augmented_batches_repeat_whatever_the_thread_order() -> None:
    """The same seed gives the same augmented batches, in whatever order (and thread) they are
    built: worker threads must not share one random stream."""
    from foldstack.training.augment import compose
    from foldstack.training.loader import ImageBatches

    images = np.random.default_rng(0).integers(0, 255, (96, 16, 16, 3), dtype=np.uint8)
    augment = [{"__class_fullname__": "Affine", "rotate": [-30, 30], "translate_percent": [-0.2, 0.2], "p": 1.0}]

    def batches(order: list[int]) -> dict[int, np.ndarray]:
        data = ImageBatches(images, np.arange(96), np.zeros(96), compose(augment), batch_size=16,
                            shuffle=True, seed=7, workers=2)
        return {i: data[i][0] for i in order}

    forward, backward = batches(list(range(6))), batches(list(reversed(range(6))))
    for i in range(6):
        np.testing.assert_array_equal(forward[i], backward[i])
    assert not np.array_equal(forward[0], images[:16])  # it did augment


#: Under JAX, data parallel over two virtual CPU devices (``argv[1]``: the tiny competition's
#: root, ``argv[2]``: a folder): each regime fits a fold of 59 training and 59 held-out rows in
#: batches of 16 (the last one 11 rows, odd), then predicts the odd rows. Prints, per regime, the
#: held-out predictions and the same rows predicted in slices of an even length, as JSON.
JAX_ODD_ROWS = """
import json, sys
from dataclasses import replace
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[3])
from conftest import make_config
from test_train import fold_task, model_config
from foldstack.core import metrics
from foldstack.core.paths import Paths
from foldstack.runtime import device, distribute
from foldstack.training.regimes import fit
tiny = make_config(), Paths.for_pipeline("tiny", Path(sys.argv[1]))
settings = device.configure(training=True)  # compiled by XLA, as a fold's process trains (training/worker.py)
out = {}
for regime in ("scratch", "features"):
    (Path(sys.argv[2]) / regime).mkdir()
    with distribute.data_parallel(True) as split:
        task, images = fold_task(tiny, Path(sys.argv[2]) / regime, model_config(regime=regime, epochs=1, batch_size=16))
        task = replace(task, train_index=task.train_index[:59], valid_index=task.valid_index[:59])
        predict = fit(task, images, metrics.get(task.metric), jit_compile=settings.jit_compile)
        index = task.valid_index
        out[regime] = {"replicas": split.replicas, "odd": predict("train", index).tolist(),
                       "even": [*predict("train", index[:58]).tolist(), predict("train", index[-2:])[-1].tolist()]}
print("RESULT " + json.dumps(out))
"""


def test_jax_data_parallel_fits_and_predicts_odd_batches(tiny_digits, tmp_path: Path) -> None:
    """keras-team/keras#21167: JAX's DataParallel shards every batch evenly over its devices. An
    odd last training batch is cut to an even one, an odd prediction batch padded and its extra
    output dropped: each held-out row's prediction is the one it gets among even slices."""
    _, paths = tiny_digits
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0 "
                        "--xla_llvm_disable_expensive_passes=true"}
    run = subprocess.run([sys.executable, "-c", JAX_ODD_ROWS, str(paths.root), str(tmp_path),
                          str(Path(__file__).parent)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    for regime, seen in result.items():
        odd, even = np.array(seen["odd"]), np.array(seen["even"])
        assert seen["replicas"] == 2 and odd.shape == (59, 10), regime
        np.testing.assert_allclose(odd.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(odd, even, rtol=1e-4, atol=1e-6, err_msg=regime)
