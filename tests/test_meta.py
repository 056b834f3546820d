"""Table columns in the network (a model's ``meta``): the config, the encoding fitted on a fold's
training rows alone, bad tables, and an end-to-end run where a column carries the label and the
images carry nothing: trained, predicted (the test table, ``--images --table``), explained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from foldstack import cli
from foldstack.core import metrics
from foldstack.core.config import ConfigError
from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.data import tables
from foldstack.pipeline import parse_pipeline
from foldstack.runtime import isolate
from foldstack.stages import bundle, download, folds, train
from foldstack.training.fold_task import WORKER, FoldTask, members
from foldstack.training.meta import NAME, MetaRows, MetaScale
from conftest import predict_images, run_to_stack, small_cnn_pipeline

META = {"columns": ["age"], "categorical": ["site"]}
N_TRAIN, N_TEST = 160, 40


def melanoma(**model) -> dict:
    """A binary CSV competition on a local folder, and two small_cnn models: ``cnn_meta`` reads
    the table's columns, ``cnn`` the same recipe without them."""
    raw = small_cnn_pipeline("meta", "binary", "roc_auc", {
        "id_column": "image_name", "label_column": "target", "train_csv": "train.csv", "test_csv": "test.csv",
        "train_dir": "train", "test_dir": "test"}, submission={"format": "binary"}, positive_class="1")
    # One epoch at a constant rate (the default's warm-up would take the whole epoch).
    plain = {**raw["models"][0], "batch_size": 4, "lr": 0.01, "schedule": {"type": "constant", "warmup_epochs": 0}}
    raw["models"] = [{**plain, "name": "cnn_meta", "meta": META, **model}, plain]
    return raw


def write_competition(folder: Path, seed: int = 0) -> pd.DataFrame:
    """Images of noise, the same distribution for both classes; ``age`` carries the label
    (with noise, some cells empty), ``site`` a category that carries nothing. Returns the
    whole table (train rows, then test rows)."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    target = np.arange(n) % 2
    age = 40 + 20 * target + rng.normal(0, 6, n)
    table = pd.DataFrame({"image_name": [f"ISIC_{i:05d}" for i in range(n)], "target": target,
                          "age": [f"{a:.1f}" for a in age],
                          "site": rng.choice(["torso", "head/neck", "palms"], n)})
    table.loc[rng.choice(n, 8, replace=False), "age"] = ""  # missing: 0 and an indicator
    for split, rows in (("train", table.iloc[:N_TRAIN]), ("test", table.iloc[N_TRAIN:])):
        (folder / split).mkdir(parents=True)
        for name in rows["image_name"]:
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / split / f"{name}.png")
    train_rows, test_rows = table.iloc[:N_TRAIN], table.iloc[N_TRAIN:]
    train_rows.to_csv(folder / "train.csv", index=False)
    test_rows.drop(columns="target").to_csv(folder / "test.csv", index=False)
    test_rows[["image_name", "target"]].assign(target=0).to_csv(folder / "sample_submission.csv", index=False)
    test_rows[["image_name", "target"]].to_csv(folder / "solution.csv", index=False)
    return table


def located(raw: dict, folder: Path) -> dict:
    return {**raw, "data": {**raw["data"], "source": {"type": "local", "path": str(folder)}, "extension": ".png"}}


# --- config ----------------------------------------------------------------------------------------


def test_meta_is_a_model_key_refused_where_its_rows_have_no_columns() -> None:
    cfg = parse_pipeline(melanoma())
    assert cfg.models[0].meta.numeric == ["age"] and cfg.models[0].meta.categorical == ["site"]
    # Part of the model's recipe (its folds' fingerprint), and absent from a model without it.
    assert cfg.models[0].model_dump()["meta"] == META and "meta" not in cfg.models[1].model_dump()
    for model, message in (({"regime": "features"}, "models.0.meta .*needs an image regime"),
                           ({"mixup": {"alpha": 0.2}}, "models.0.meta .*not with mixup"),
                           ({"meta": {"columns": []}}, "list columns or categorical columns")):
        with pytest.raises(ConfigError, match=message):
            parse_pipeline(melanoma(**model))
    extra = melanoma()
    extra["data"]["extra"] = [{"source": {"type": "local", "path": "/elsewhere"}, "train_csv": "train.csv"}]
    with pytest.raises(ConfigError, match=r"models\[0\].meta: not with data.extra"):
        parse_pipeline(extra)


# --- the encoding ------------------------------------------------------------------------------------


def rows(ages: list[float], sites: list[str]) -> MetaRows:
    cfg = parse_pipeline(melanoma())
    table = pd.DataFrame({"age": np.asarray(ages, dtype=np.float64), "site": pd.Series(sites, dtype=object)})
    return MetaRows.of(table, cfg.models[0].meta)


def test_the_scale_comes_from_the_folds_training_rows_alone() -> None:
    spec = parse_pipeline(melanoma()).models[0].meta
    # Rows 0-3 train; row 4, a validation row, is an outlier of both columns.
    every = rows([10, 20, 30, np.nan, 1e6], ["torso", "torso", "palms", "", "moon"])
    train_index = np.arange(4)
    scale = MetaScale.fit(spec, every, train_index)
    assert scale.mean == pytest.approx((20.0,)) and scale.std == pytest.approx((np.std([10, 20, 30]),))
    assert scale.values == (("", "palms", "torso"),)
    # The same scale whatever the validation rows hold.
    assert MetaScale.fit(spec, rows([10, 20, 30, np.nan, -5], ["torso", "torso", "palms", "", "sky"]),
                         train_index) == scale
    encoded = scale.encode(every)
    assert encoded.shape == (5, scale.width) == (5, 2 + 4)
    np.testing.assert_allclose(encoded[:, 0], [(v - 20) / np.std([10, 20, 30]) for v in (10, 20, 30, 20, 1e6)])
    np.testing.assert_array_equal(encoded[:, 1], [0, 0, 0, 1, 0])  # missing: 0 and its indicator
    np.testing.assert_array_equal(encoded[:, 2:], [[0, 0, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0],
                                                   [0, 0, 0, 1]])  # "moon", never trained on: unknown


def test_a_constant_or_empty_column_scales_by_one() -> None:
    spec = parse_pipeline(melanoma()).models[0].meta
    scale = MetaScale.fit(spec, rows([5, 5, 5], ["a", "a", "a"]), np.arange(3))
    assert scale.std == (1.0,) and scale.mean == (5.0,)
    scale = MetaScale.fit(spec, rows([np.nan, np.nan], ["a", "a"]), np.arange(2))
    assert (scale.mean, scale.std) == ((0.0,), (1.0,))


def test_a_network_with_meta_takes_the_columns_beside_the_image_and_augments_on_the_device(tmp_path: Path) -> None:
    import keras

    from foldstack.training.device_augment import device_augment, training_network
    from foldstack.training.network import POOLED
    from foldstack.training.regimes import image_network

    cfg = parse_pipeline(melanoma())
    task = FoldTask(model=cfg.models[0], task="binary", metric="roc_auc", y=np.zeros(4, dtype=np.int64), n_classes=2,
                    train_index=np.arange(2), valid_index=np.arange(2, 4), augment=cfg.augment, caches={},
                    fold_dir=tmp_path, seed=0)
    network, _ = image_network(task, meta_width=5)
    assert sorted(tensor.name for tensor in network.inputs) == ["image", "meta"]
    trainer = training_network(network, device_augment([{"__class_fullname__": "HorizontalFlip", "p": 0.5}], seed=0),
                               mix=False)
    images, columns = np.zeros((3, 16, 16, 3), np.float32), np.eye(3, 5, dtype=np.float32)
    # The trainer shares the network's weights, and the columns change what it gives.
    assert {id(w) for w in trainer.weights} == {id(w) for w in network.weights}
    out = keras.ops.convert_to_numpy(trainer({"image": images, "meta": columns}, training=False))
    assert out.shape == (3, 2) and not np.allclose(out[0], out[1])
    # The pooled image features come before the columns join (what predict --images measures).
    embedder = keras.Model(network.get_layer("image").output, network.get_layer(POOLED).output)
    assert embedder(images).shape[0] == 3


def test_changed_columns_change_a_folds_source_so_it_trains_again() -> None:
    before = rows([10, 20], ["a", "b"])
    assert train.with_meta("teachers", None) == "teachers" and train.with_meta(None, None) is None
    assert train.with_meta(None, before) == train.with_meta(None, rows([10, 20], ["a", "b"]))
    assert train.with_meta(None, before) != train.with_meta(None, rows([10, 21], ["a", "b"]))
    assert train.with_meta(None, before) != train.with_meta(None, rows([10, 20], ["a", "c"]))
    assert train.with_meta("teachers", before) != train.with_meta(None, before)


# --- bad tables ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("split, change, message", [
    ("train", lambda t: t.drop(columns="age"), r"train.csv: missing column 'age'"),
    ("test", lambda t: t.drop(columns="site"), r"test.csv: missing column 'site'"),
    ("train", lambda t: t.assign(age=t["age"].where(t.index != 3, "forty")),
     r"train.csv: row 5 \(id 'ISIC_00003'\): column 'age' holds 'forty', not a number"),
    ("test", lambda t: t.assign(age=t["age"].where(t.index != 0, "?")),
     r"test.csv: row 2 \(id 'ISIC_00160'\): column 'age' holds '\?', not a number"),
])
def test_a_bad_table_is_one_line_naming_the_file_row_and_column(tmp_path: Path, split: str, change,
                                                                message: str) -> None:
    folder = tmp_path / "competition"
    write_competition(folder)
    path = folder / f"{split}.csv"
    change(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)
    cfg = parse_pipeline(located(melanoma(), folder))
    paths = Paths.for_pipeline("meta", tmp_path)
    download.run(cfg, paths)
    ids = pd.read_csv(path, dtype=str)["image_name"].to_numpy()
    with pytest.raises(DataError, match=message):
        tables.feature_table(cfg, paths, split, ids, cfg.models[0].meta, "model 'cnn_meta' meta")
    if split == "train":  # the train stage reads it so
        folds.run(cfg, paths)
        with pytest.raises(DataError, match=message):
            train.run(cfg, paths, only=["cnn_meta"], workers=1)


# --- end to end --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stacked(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("meta")
    table = write_competition(root / "competition")
    cfg, paths, board, _ = run_to_stack(located(melanoma(), root / "competition"), root)
    return cfg, paths, table


@pytest.mark.slow
def test_a_column_with_the_label_lifts_the_network_whose_images_carry_none(stacked) -> None:
    cfg, paths, table = stacked
    auc = metrics.get("roc_auc")
    folds_csv = pd.read_csv(paths.folds, dtype=str)
    y = folds_csv["label"].astype(int).to_numpy()
    scores = {}
    for model in ("cnn_meta", "cnn"):
        oof = pd.read_parquet(paths.oof / f"{model}.parquet").set_index("id").loc[folds_csv["id"]]
        scores[model] = auc(y, oof[["0", "1"]].to_numpy(), n_classes=2)
    # The images are noise: the plain network is near chance; age separates the classes (each
    # fold's AUC ~0.97; pooled over the two folds' networks a little less).
    assert scores["cnn"] < 0.65
    assert scores["cnn_meta"] > scores["cnn"] + 0.2 and scores["cnn_meta"] > 0.75
    # Each fold saved its scale, fitted on its training rows alone.
    for fold in range(cfg.folds.k):
        saved = json.loads((paths.models / "cnn_meta" / f"fold{fold}" / NAME).read_text())
        training = table.set_index("image_name").loc[folds_csv.loc[folds_csv["fold"] != str(fold), "id"], "age"]
        training = pd.to_numeric(training.replace("", np.nan))
        assert saved["mean"] == pytest.approx([training.mean()]) and saved["std"] == pytest.approx([training.std(ddof=0)])
    assert not (paths.models / "cnn" / "fold0" / NAME).exists()
    # The bundle (the offline kernel's predict) carries each fold's scale.
    shipped = {path.as_posix() for path in bundle._inference_files(cfg, paths)}
    assert {f"models/cnn_meta/fold{fold}/{NAME}" for fold in range(cfg.folds.k)} <= shipped


@pytest.mark.slow
def test_the_test_set_is_predicted_with_its_tables_columns(stacked) -> None:
    cfg, paths, table = stacked
    auc, truth = metrics.get("roc_auc"), table.set_index("image_name")["target"]
    scores = {}
    for model in ("cnn_meta", "cnn"):
        test = pd.read_parquet(paths.test / f"{model}.parquet").set_index("id")
        scores[model] = auc(truth.loc[test.index].to_numpy(), test[["0", "1"]].to_numpy(), n_classes=2)
    assert scores["cnn_meta"] > 0.85 and scores["cnn_meta"] > scores["cnn"] + 0.15


@pytest.mark.slow
def test_predict_images_reads_the_columns_from_its_table(stacked, tmp_path: Path) -> None:
    cfg, paths, table = stacked
    args = ["predict", "--pipeline", str(paths.root / "meta.yaml"), "--root", str(paths.root),
            "--images", str(paths.data / "test"), "--out", str(tmp_path / "out.csv")]
    assert cli.main(args) == 2  # no --table: one line, nothing written
    assert not (tmp_path / "out.csv").exists()
    columns = paths.data / "test.csv"
    frame = predict_images(paths, "test", tmp_path / "images.csv", "--table", str(columns), "--explain")
    stacked_test = pd.read_parquet(paths.stack / "test.parquet").set_index("id")
    ids = frame["image"].str.removesuffix(".png")
    np.testing.assert_allclose(frame["1"], stacked_test.loc[ids, "1"], atol=1e-4)
    assert all((tmp_path / heatmap).is_file() for heatmap in frame["heatmap"])


@pytest.mark.slow
def test_gradcam_explains_a_network_with_meta(stacked) -> None:
    cfg, paths, table = stacked
    model = cfg.model("cnn_meta")
    folds_csv = pd.read_csv(paths.folds, dtype=str)
    held = np.flatnonzero(folds_csv["fold"].to_numpy() == "0")[:6]
    ids = folds_csv["id"].to_numpy()
    images = np.stack([np.asarray(Image.open(paths.data / "train" / f"{i}.png")) for i in ids[held]])
    meta = MetaRows.of(tables.feature_table(cfg, paths, "train", ids, model.meta, "meta"), model.meta)
    run = members(model, cfg.folds.k, cfg.seed)[0]
    task = FoldTask(model=model, task=cfg.task, metric=cfg.metric, y=np.zeros(len(ids), dtype=np.int64), n_classes=2,
                    train_index=np.zeros(0, dtype=np.int64), valid_index=held, augment=cfg.augment, caches={},
                    fold_dir=paths.models / model.name / run.name, seed=run.run_seed)
    result = isolate.call(f"{WORKER}:explain_images", task, images, None, meta.take(held))
    assert result["heatmaps"].shape == (len(held), 16, 16)
    # The network Grad-CAM rebuilt is the trained one, table columns included: its OOF probabilities.
    oof = pd.read_parquet(paths.models / model.name / run.name / "oof.parquet").set_index("id").loc[ids[held]]
    np.testing.assert_allclose(result["proba"], oof[["0", "1"]].to_numpy(), atol=1e-4)


@pytest.mark.slow
def test_the_offline_kernel_predicts_with_the_test_tables_columns_as_predict_does(stacked, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """The bundle (each fold's meta.json in it) in a kernel: the kernel lays it out in scratch, copies
    the competition, and predicts the test set afresh reading its table's columns; the probabilities are
    the predict stage's on the training machine, for the meta model and the plain one."""
    cfg, paths, table = stacked
    requirements = tmp_path / "no-requirements.txt"
    requirements.write_text("# nothing to ship\n")
    folder = bundle.run(cfg, paths, paths.root / "meta.yaml", requirements=requirements)
    working, scratch = tmp_path / "working", tmp_path / "scratch"
    for name, value in (("KAGGLE_KERNEL_RUN_TYPE", "Batch"), ("FOLDSTACK_KAGGLE_WORKING", str(working)),
                        ("FOLDSTACK_KAGGLE_INPUT", str(tmp_path / "input")), ("FOLDSTACK_SCRATCH", str(scratch))):
        monkeypatch.setenv(name, value)
    assert cli.main(["kernel", "--bundle", str(folder)]) == 0
    kernel_test = scratch / "artifacts" / "meta" / "test"
    assert not (folder / "artifacts" / "meta" / "test").exists()  # predicted in the kernel, not shipped
    for model in ("cnn_meta", "cnn"):
        got = pd.read_parquet(kernel_test / f"{model}.parquet").set_index("id").sort_index()
        want = pd.read_parquet(paths.test / f"{model}.parquet").set_index("id").sort_index()
        assert got.index.tolist() == want.index.tolist()
        np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=0, atol=1e-5)
    submission = pd.read_csv(working / "submission.csv")
    assert sorted(submission["image_name"]) == sorted(table["image_name"].iloc[N_TRAIN:])
