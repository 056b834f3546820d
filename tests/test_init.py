"""`foldstack init` (``stages/init.py``, ``data/infer.py``): the pipeline read off a competition's own
files. On each of the twelve competitions' fixtures (``tests/competitions.py``) the inferred
pipeline equals the shipped one in its data, task, submission, positive class and folds keys (the
source aside: a local folder here), or the difference is named below with why the shipped one is
right; and the inferred pipeline, its models swapped for the competitions' tiny one, runs end to
end to a valid submission. New fixtures, each as its competition ships it, cover a regression
target with table columns, a .7z holding the images and the label table, integer ids, and a
`labels` column of space-separated classes; and the cases the files cannot settle."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import competitions
import numpy as np
import pandas as pd
import py7zr
import pytest
import yaml
from competitions import COMPETITIONS, Fixture, save_pictures, split_labels, write_csv
from test_competitions import K, TINY_MODEL

from foldstack import cli
from foldstack.core.errors import FoldstackError
from foldstack.core.paths import Paths
from foldstack.pipeline import load_pipeline
from foldstack.stages import download, init

REPO = Path(__file__).resolve().parents[1]

#: Where an inferred key differs from the shipped pipeline, and why the shipped one is right.
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {
}


def _init(slug: str, public: Path, tmp_path: Path, **options) -> init.Initialised:
    paths = Paths.for_pipeline(slug, tmp_path / "root")
    return init.run(slug, paths, tmp_path / "pipelines" / f"{slug}.yaml", {"type": "local", "path": str(public)},
                    gpus=0, **options)


def _keys(cfg) -> dict:
    """The keys init must infer: data (its source aside), task, positive class, submission, folds."""
    data = cfg.data.model_dump(mode="json")
    data.pop("source")
    return {**{f"data.{k}": v for k, v in data.items()}, "task": cfg.task, "positive_class": cfg.positive_class,
            "submission.format": cfg.submission.format,
            **{f"folds.{k}": v for k, v in cfg.folds.model_dump(mode="json").items()}}


@pytest.mark.parametrize("slug", list(COMPETITIONS))
def test_init_infers_the_shipped_pipeline(slug: str, tmp_path: Path) -> None:
    fixture = COMPETITIONS[slug].build(tmp_path / "fixture")
    shipped = competitions.fingerprint(fixture.public)
    done = _init(slug, fixture.public, tmp_path)
    inferred = _keys(load_pipeline(done.path))
    expected = _keys(load_pipeline(REPO / "pipelines" / f"{slug}.yaml"))
    differences = {key for key in expected if inferred[key] != expected[key]}
    assert differences == set(KNOWN_DIFFERENCES.get(slug, {})), {k: (inferred[k], expected[k]) for k in differences}
    assert competitions.fingerprint(fixture.public) == shipped
    # Every key line of the YAML says where it came from.
    text = done.path.read_text()
    for line in text.splitlines():
        if line.startswith("  ") and ":" in line and not line.lstrip().startswith(("- ", "train:", "valid:", "tta:")):
            assert "  # " in line, line


@pytest.mark.slow
@pytest.mark.parametrize("slug", list(COMPETITIONS))
def test_inferred_pipeline_runs_end_to_end(slug: str, tmp_path: Path) -> None:
    """The inferred pipeline, its models swapped for the tiny one and its folds cut to K (as the
    shipped ones are in tests/test_competitions.py), writes a submission the competition accepts."""
    competition = COMPETITIONS[slug]
    fixture = competition.build(tmp_path / "fixture")
    written = _run_inferred(slug, fixture.public, tmp_path)
    sample = pd.read_csv(fixture.public / competition.sample, dtype=str, keep_default_na=False)
    competition.check(pd.read_csv(written, dtype=str, keep_default_na=False), sample, fixture)


def _run_inferred(slug: str, public: Path, tmp_path: Path) -> Path:
    """Init, then every stage through the command line, as `make all` runs them; the submission."""
    done = _init(slug, public, tmp_path)
    raw = yaml.safe_load(done.path.read_text())
    raw["models"], raw["folds"]["k"] = [TINY_MODEL], K
    done.path.write_text(yaml.safe_dump(raw, sort_keys=False))
    root = str(tmp_path / "root")
    for stage in ("download", "folds", "train", "predict", "stack", "submit"):
        assert cli.main([stage, "-p", str(done.path), "--root", root]) == 0, stage
    return next((tmp_path / "root" / "submissions" / slug).glob(f"{slug}-*.csv"))


# --- new fixtures, each as its competition ships it ---------------------------------------------------


def _seven(archive: Path, folder: Path) -> None:
    """Pack ``folder`` into ``archive`` (members under the folder's name) and remove it."""
    with py7zr.SevenZipFile(archive, "w") as packed:
        packed.writeall(folder, folder.name)
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    folder.rmdir()


CIFAR = ["airplane", "automobile", "bird", "cat"]


def build_cifar10(root: Path) -> Fixture:
    """Kaggle's CIFAR-10 - Object Recognition in Images: train.7z holding train/<n>.png and test.7z
    holding test/<n>.png (integer ids from 1), trainLabels.csv.7z holding trainLabels.csv (id,
    label), sampleSubmission.csv (id, label = 'cat'): images and the label table only in .7z."""
    rng = np.random.default_rng(21)
    public, private = root / "public", root / "private"
    train_labels, test_labels = split_labels(CIFAR, rng)
    train_ids = list(range(1, len(train_labels) + 1))
    test_ids = list(range(1, len(test_labels) + 1))
    save_pictures([public / "train" / f"{i}.png" for i in train_ids], train_labels, rng)
    save_pictures([public / "test" / f"{i}.png" for i in test_ids], test_labels, rng)
    _seven(public / "train.7z", public / "train")
    _seven(public / "test.7z", public / "test")
    write_csv(pd.DataFrame({"id": train_ids, "label": [CIFAR[c] for c in train_labels]}), public / "trainLabels.csv")
    with py7zr.SevenZipFile(public / "trainLabels.csv.7z", "w") as packed:
        packed.write(public / "trainLabels.csv", "trainLabels.csv")
    (public / "trainLabels.csv").unlink()
    write_csv(pd.DataFrame({"id": test_ids, "label": "cat"}), public / "sampleSubmission.csv")
    write_csv(pd.DataFrame({"id": test_ids, "label": [CIFAR[c] for c in test_labels]}), private / "answers.csv")
    return Fixture(public, private)


PLANT_2021 = ["complex", "frog_eye_leaf_spot", "healthy", "powdery_mildew", "rust", "scab"]


def build_plant_pathology_2021(root: Path) -> Fixture:
    """Kaggle's Plant Pathology 2021 (FGVC8): train.csv (image = '<16 hex>.jpg', labels: space-separated
    diseases, or 'healthy'), train_images/, test_images/, sample_submission.csv (image, labels =
    'healthy')."""
    rng = np.random.default_rng(22)
    public, private = root / "public", root / "private"
    rows = competitions.label_sets(len(PLANT_2021), 36, rng)
    test_rows = competitions.label_sets(len(PLANT_2021), 8, rng, offset=1)
    ids = [f"{i}.jpg" for i in competitions.hex_ids(rng, len(rows) + len(test_rows), 16)]
    train_ids, test_ids = ids[:len(rows)], ids[len(rows):]
    for split, split_ids, split_rows in (("train_images", train_ids, rows), ("test_images", test_ids, test_rows)):
        for i, row in zip(split_ids, split_rows):
            competitions.save(competitions.grid_picture(row, len(PLANT_2021), rng), public / split / i)

    def joined(rows: list[list[int]]) -> list[str]:
        return [" ".join(PLANT_2021[j] for j in row) for row in rows]

    write_csv(pd.DataFrame({"image": train_ids, "labels": joined(rows)}), public / "train.csv")
    write_csv(pd.DataFrame({"image": test_ids, "labels": "healthy"}), public / "sample_submission.csv")
    write_csv(pd.DataFrame({"image": test_ids, "labels": joined(test_rows)}), private / "answers.csv")
    return Fixture(public, private)


def build_pawpularity(root: Path) -> Fixture:
    """Kaggle's PetFinder.my - Pawpularity Contest: train.csv (Id = 32 hex, twelve 0/1 photo
    columns, Pawpularity 1-100), test.csv (Id, the twelve columns), train/<Id>.jpg, test/<Id>.jpg,
    sample_submission.csv (Id, Pawpularity with decimals)."""
    rng = np.random.default_rng(23)
    public, private = root / "public", root / "private"
    columns = ["Subject Focus", "Eyes", "Face", "Near", "Action", "Accessory", "Group", "Collage", "Human",
               "Occlusion", "Info", "Blur"]
    ids = competitions.hex_ids(rng, 16, 32)
    train_ids, test_ids = ids[:12], ids[12:]
    save_pictures([public / "train" / f"{i}.jpg" for i in train_ids], [0] * 12, rng)
    save_pictures([public / "test" / f"{i}.jpg" for i in test_ids], [0] * 4, rng)
    meta = {c: rng.integers(0, 2, 16) for c in columns}
    write_csv(pd.DataFrame({"Id": train_ids, **{c: v[:12] for c, v in meta.items()},
                            "Pawpularity": rng.integers(1, 101, 12)}), public / "train.csv")
    write_csv(pd.DataFrame({"Id": test_ids, **{c: v[12:] for c, v in meta.items()}}), public / "test.csv")
    write_csv(pd.DataFrame({"Id": test_ids, "Pawpularity": [67.75, 23.0, 41.5, 88.25]}),
              public / "sample_submission.csv")
    return Fixture(public, private)


def test_cifar10_from_7z_archives_with_integer_ids(tmp_path: Path) -> None:
    fixture = build_cifar10(tmp_path / "fixture")
    keys = _keys(load_pipeline(_init("cifar-10", fixture.public, tmp_path).path))
    assert {k: keys[k] for k in ("data.layout", "data.train_csv", "data.id_column", "data.label_column",
                                 "data.train_dir", "data.test_dir", "data.extension", "data.ids_have_extension",
                                 "data.sample_submission", "task", "submission.format", "folds.strategy")} == {
        "data.layout": "csv", "data.train_csv": "trainLabels.csv", "data.id_column": "id", "data.label_column": "label",
        "data.train_dir": "train", "data.test_dir": "test", "data.extension": ".png",
        "data.ids_have_extension": False, "data.sample_submission": "sampleSubmission.csv", "task": "multiclass",
        "submission.format": "label", "folds.strategy": "stratified"}


def test_a_labels_column_of_space_separated_classes_is_multilabel(tmp_path: Path) -> None:
    fixture = build_plant_pathology_2021(tmp_path / "fixture")
    keys = _keys(load_pipeline(_init("plant-pathology-2021-fgvc8", fixture.public, tmp_path).path))
    assert {k: keys[k] for k in ("data.id_column", "data.label_column", "data.train_dir", "data.test_dir",
                                 "data.ids_have_extension", "task", "submission.format", "folds.strategy")} == {
        "data.id_column": "image", "data.label_column": "labels", "data.train_dir": "train_images",
        "data.test_dir": "test_images", "data.ids_have_extension": True, "task": "multilabel",
        "submission.format": "multilabel", "folds.strategy": "stratified"}


@pytest.mark.slow
@pytest.mark.parametrize("build, slug, column, allowed", [
    (build_cifar10, "cifar-10", "label", set(CIFAR)),
    (build_plant_pathology_2021, "plant-pathology-2021-fgvc8", "labels", set(PLANT_2021)),
])
def test_new_fixtures_run_end_to_end(build, slug: str, column: str, allowed: set, tmp_path: Path) -> None:
    fixture = build(tmp_path / "fixture")
    written = _run_inferred(slug, fixture.public, tmp_path)
    sample = pd.read_csv(next(fixture.public.glob("*ubmission*.csv")), dtype=str, keep_default_na=False)
    submission = pd.read_csv(written, dtype=str, keep_default_na=False)
    competitions.same_frame_shape(submission, sample)
    assert {c for cell in submission[column] for c in cell.split()} <= allowed


def test_a_regression_target_is_written_to_check_and_refused_in_one_line(tmp_path: Path, capsys,
                                                                        monkeypatch) -> None:
    fixture = build_pawpularity(tmp_path / "fixture")
    monkeypatch.chdir(tmp_path)
    status = cli.main(["init", "-p", "pawpularity", "--data", str(fixture.public), "--root", str(tmp_path / "root")])
    out, err = capsys.readouterr()
    text = (tmp_path / "pipelines" / "pawpularity.yaml").read_text()
    assert status == 2 and "foldstack cannot train regression yet" in err and len(err.strip().splitlines()) == 1
    assert "task: regression  # check:" in text and "test_csv: test.csv" in text and "label_column: Pawpularity" in text
    assert "task: " in out and "foldstack cannot train regression yet" in out  # the note, listed with the checks


# --- when the files cannot say ----------------------------------------------------------------------


def test_no_sample_submission_is_one_line_and_checks(tmp_path: Path) -> None:
    fixture = COMPETITIONS["histopathologic-cancer-detection"].build(tmp_path / "fixture")
    (fixture.public / "sample_submission.csv").unlink()
    done = _init("histo", fixture.public, tmp_path)
    assert any(n.endswith("no sample submission among train_labels.csv; the submission's file and format are "
                          "guesses") for n in done.notes), done.notes
    text = done.path.read_text()
    assert "sample_submission: sample_submission.csv  # check:" in text and "format: binary  # check:" in text
    assert {c.split(":")[0] for c in done.checks} >= {"sample_submission", "id_column", "test_dir", "format"}


def test_two_candidate_label_columns_are_one_line_and_a_check(tmp_path: Path) -> None:
    fixture = COMPETITIONS["histopathologic-cancer-detection"].build(tmp_path / "fixture")
    table = pd.read_csv(fixture.public / "train_labels.csv", dtype=str)
    table = table.rename(columns={"label": "tumour"}).assign(stain=["a", "b"] * (len(table) // 2))
    write_csv(table, fixture.public / "train_labels.csv")
    done = _init("histo", fixture.public, tmp_path)
    assert any("2 columns could be the label ('tumour', 'stain'); label_column 'tumour' is a guess" in n
               for n in done.notes), done.notes
    assert "label_column: tumour  # check:" in done.path.read_text()


def test_class_folders_and_a_label_table_that_disagree(tmp_path: Path) -> None:
    fixture = COMPETITIONS["paddy-disease-classification"].build(tmp_path / "fixture")
    table = pd.read_csv(fixture.public / "train.csv", dtype=str)
    wrong = "blast" if table.loc[0, "label"] != "blast" else "normal"
    image = table.loc[0, "image_id"]
    table.loc[0, "label"] = wrong
    write_csv(table, fixture.public / "train.csv")
    done = _init("paddy", fixture.public, tmp_path)
    assert any(f"train.csv: id {image!r} is labelled {wrong!r}, but its image is in train_images/" in n
               and n.endswith("; the class folders are taken") for n in done.notes), done.notes
    assert "layout: folders  # check:" in done.path.read_text()


def test_test_images_named_by_no_sample_row(tmp_path: Path) -> None:
    fixture = COMPETITIONS["cassava-leaf-disease-classification"].build(tmp_path / "fixture")
    for image in (fixture.public / "test_images").iterdir():
        image.rename(image.with_name(f"x{image.name}"))
    done = _init("cassava", fixture.public, tmp_path)
    assert any("sample_submission.csv: none of its ids" in n and n.endswith("test_dir test_images is a guess")
               for n in done.notes), done.notes
    assert "test_dir: test_images  # check:" in done.path.read_text()


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    fixture = COMPETITIONS["aptos2019-blindness-detection"].build(tmp_path / "fixture")
    done = _init("aptos", fixture.public, tmp_path)
    done.path.write_text("mine")
    with pytest.raises(FoldstackError, match=r"aptos\.yaml: already there; pass --force"):
        _init("aptos", fixture.public, tmp_path)
    assert done.path.read_text() == "mine"
    _init("aptos", fixture.public, tmp_path, force=True)
    assert done.path.read_text().startswith("# Written by `foldstack init`")


def test_cli_init_writes_lists_checks_and_runs_check(tmp_path: Path, capsys, monkeypatch) -> None:
    fixture = COMPETITIONS["dogs-vs-cats-redux-kernels-edition"].build(tmp_path / "fixture")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "-p", "dogs", "--data", str(fixture.public), "--root", str(tmp_path / "root")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {Path('pipelines') / 'dogs.yaml'}" in out
    assert "positive_class: nothing in the files says which of cat, dog is positive" in out
    assert "check dogs:" in out and "problems: none" in out


def test_the_metric_comes_from_the_competitions_evaluation(tmp_path: Path, monkeypatch) -> None:
    """With a Kaggle competition, the client's evaluation names the metric (no '# check:')."""
    fixture = COMPETITIONS["dogs-vs-cats-redux-kernels-edition"].build(tmp_path / "fixture")
    monkeypatch.setattr(init.kaggle, "download", lambda cfg, paths: download.sources.fetch(
        type("Local", (), {"name": cfg.name, "data": cfg.data.model_copy(
            update={"source": init.DataConfig(source={"type": "local", "path": str(fixture.public)}).source})})(),
        paths))
    monkeypatch.setattr(init.kaggle, "evaluation_metric", lambda slug: "Log Loss")
    paths = Paths.for_pipeline("dogs", tmp_path / "root")
    done = init.run("dogs", paths, tmp_path / "dogs.yaml",
                    {"type": "kaggle_competition", "competition": "dogs-vs-cats-redux-kernels-edition"}, gpus=1)
    text = done.path.read_text()
    assert "metric: log_loss  # the competition's evaluation: Log Loss" in text
    assert "backbone: efficientnet_b3" in text  # sized for a GPU
    assert load_pipeline(done.path).data.source.competition == "dogs-vs-cats-redux-kernels-edition"
