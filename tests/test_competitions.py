"""Twelve real Kaggle competitions, each from its own `pipelines/<slug>.yaml`, end to end on a tiny
fixture laid out exactly as the competition ships it (`tests/competitions.py`): download (a local
copy of the competition's files, untouched), folds, train, predict, stack, submit; then the
submission is checked against the competition's own rules and scored as the competition scores.

Only what a fixture must is replaced in each YAML: the source (a local folder instead of Kaggle),
the models (one small CNN at 16 px trained from scratch for 2 epochs instead of ImageNet
networks at 300+ px), the number of folds (2: a fixture holds 6 images a class) and
``data.solution`` (the fixture's answers, for the local score ``index.csv`` records). The written
submission must equal the one rebuilt here from ``stack/test.parquet`` by the competition's own
rules, and the competition's grader must give it the score ``index.csv`` records. Each run prints
its CV and that score (`pytest -s` shows them).
"""

from __future__ import annotations

import json
from pathlib import Path

import competitions
import numpy as np
import pandas as pd
import pytest
import yaml
from competitions import COMPETITIONS

from foldstack.contracts import stack_output
from foldstack.core.config import PipelineConfig
from foldstack.core.paths import Paths
from foldstack.pipeline import load_pipeline, parse_pipeline
from foldstack.stages import download, folds, predict, stack, submit, train

REPO = Path(__file__).resolve().parents[1]

#: The one model every fixture trains. A batch larger than any fold holds the whole fold, so a fold
#: traces its training step for one batch shape only (tracing, not stepping, is most of its time).
TINY_MODEL = {"name": "tiny", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "scratch",
              "epochs": 2, "batch_size": 64, "lr": 0.003}

#: Folds of a fixture: 6 images a class (at least 4 positives a label) keep every class in both.
K = 2

#: Each metric's range, to check the local score is one.
RANGES = {"roc_auc": (0, 1), "mean_column_auc": (0, 1), "accuracy": (0, 1), "f1_micro": (0, 1),
          "quadratic_kappa": (-1, 1), "log_loss": (0, np.inf)}


def tiny_pipeline(slug: str, public: Path, solution: Path | None = None) -> PipelineConfig:
    """``pipelines/<slug>.yaml`` with its source, models (but the table columns a model reads,
    ``meta``) and fold count replaced for the fixture, and its answers (``solution``, an absolute path) as ``data.solution``."""
    path = REPO / "pipelines" / f"{slug}.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["name"] == slug
    assert raw["data"]["source"] == {"type": "kaggle_competition", "competition": slug}
    raw["data"]["source"] = {"type": "local", "path": str(public)}
    # The first shipped model's table columns (meta) go with the tiny one: the fixture has them.
    meta = next((model["meta"] for model in raw["models"] if "meta" in model), None)
    raw["models"] = [{**TINY_MODEL, **({"meta": meta} if meta else {})}]
    raw["folds"]["k"] = K
    if solution is not None:
        raw["data"]["solution"] = str(solution)
    return parse_pipeline(raw, source=str(path))


def solution_file(competition: competitions.Competition, fixture: competitions.Fixture, folder: Path) -> Path:
    """The fixture's answers as the pipeline's train table labels its rows, outside ``public/``."""
    answers = fixture.private / competition.answers
    if competition.solution is None:
        return answers
    path = folder / "solution.csv"
    frame = pd.read_csv(answers, dtype=str, keep_default_na=False)
    competitions.write_csv(competition.solution(frame), path)
    return path


def expected_submission(cfg: PipelineConfig, paths: Paths, sample: pd.DataFrame) -> pd.DataFrame:
    """The submission rebuilt from ``stack/test.parquet`` by the format's rule, written here
    apart from foldstack's: a binary column is the YAML's positive class; a label, the class of
    the largest probability, or an ordinal score's grade (the grades sorted by value, cut at
    ``chosen.json``'s points); multilabel, every class at or above its threshold."""
    id_column = cfg.data.id_column
    test = pd.read_parquet(paths.stack / "test.parquet").astype({"id": str}).set_index("id")
    test = test.loc[sample[id_column].astype(str)]
    chosen = json.loads((paths.stack / "chosen.json").read_text())
    columns = [column for column in sample.columns if column != id_column]
    fmt = cfg.submission.format
    if fmt == "probabilities":
        values = test[columns]
    elif fmt == "binary":
        values = pd.DataFrame({columns[0]: test[cfg.positive_class]})
    elif cfg.task == "ordinal":
        names = sorted(pd.read_csv(paths.folds, dtype=str)["label"].unique(), key=float)
        cuts = np.sort(chosen["cuts"])
        values = pd.DataFrame({columns[0]: [names[int((cuts <= score).sum())] for score in test["score"]]})
    elif fmt == "multilabel":
        limits = pd.Series(chosen["thresholds"]["values"]).loc[test.columns]
        values = pd.DataFrame({columns[0]: [" ".join(sorted(test.columns[row >= limits.to_numpy()]))
                                             for row in test.to_numpy()]})
    else:
        values = pd.DataFrame({columns[0]: test.idxmax(axis=1)})
    return pd.concat([sample[[id_column]].reset_index(drop=True), values.reset_index(drop=True)], axis=1)


def assert_same_submission(written: pd.DataFrame, expected: pd.DataFrame, fmt: str) -> None:
    assert list(written.columns) == list(expected.columns)
    if fmt in ("probabilities", "binary"):
        np.testing.assert_allclose(written.iloc[:, 1:].astype(float), expected.iloc[:, 1:].astype(float), rtol=1e-9)
    elif fmt == "multilabel":  # the order of a cell's labels is the competitor's
        assert [sorted(cell.split()) for cell in written.iloc[:, 1]] == [cell.split() for cell in expected.iloc[:, 1]]
    else:
        assert written.iloc[:, 1].tolist() == expected.iloc[:, 1].astype(str).tolist()
    assert written.iloc[:, 0].tolist() == expected.iloc[:, 0].astype(str).tolist()


@pytest.mark.parametrize("slug", list(COMPETITIONS))
def test_pipeline_is_valid_as_written(slug: str) -> None:
    """The YAML as a competitor runs it (ImageNet backbones, their sizes, every augmentation and
    TTA view) passes validation: the end-to-end test replaces its models."""
    cfg = load_pipeline(REPO / "pipelines" / f"{slug}.yaml")
    assert cfg.name == slug and cfg.data.source.competition == slug
    assert any(model.weights == "imagenet" for model in cfg.models)


@pytest.mark.slow
@pytest.mark.parametrize("slug", list(COMPETITIONS))
def test_competition_runs_end_to_end_from_its_yaml(slug: str, tmp_path: Path) -> None:
    competition = COMPETITIONS[slug]
    fixture = competition.build(tmp_path / "fixture")
    shipped = competitions.fingerprint(fixture.public)
    cfg = tiny_pipeline(slug, fixture.public, solution_file(competition, fixture, tmp_path))
    paths = Paths.for_pipeline(cfg.name, tmp_path / "run")

    download.run(cfg, paths)
    folds.run(cfg, paths)
    train.run(cfg, paths, workers=1)
    predict.run(cfg, paths, workers=1)
    stack.run(cfg, paths)
    written = submit.run(cfg, paths)

    # The competition's files were read where they lie, never rewritten.
    assert competitions.fingerprint(fixture.public) == shipped
    # A model reading table columns (meta) saved each fold's encoding of them.
    for model in cfg.models:
        assert (paths.models / model.name / "fold0" / "meta.json").is_file() == (model.meta is not None)

    sample = pd.read_csv(fixture.public / competition.sample, dtype=str, keep_default_na=False)
    submission = pd.read_csv(written, dtype=str, keep_default_na=False)
    competition.check(submission, sample, fixture)
    assert_same_submission(submission, expected_submission(cfg, paths, sample), cfg.submission.format)

    answers = pd.read_csv(fixture.private / competition.answers, dtype=str, keep_default_na=False)
    score = competition.grade(submission, answers)
    low, high = RANGES[cfg.metric]
    assert low <= score <= high, score
    recorded = pd.read_csv(paths.submissions / "index.csv")
    assert recorded["file"].tolist() == [written.name]
    assert recorded["local_lb"].item() == pytest.approx(score, rel=1e-6, abs=1e-9)
    chosen = stack_output.read(paths.stack)
    assert chosen.metric == cfg.metric
    print(f"\n{slug}: CV {cfg.metric} {chosen.cv_mean:.4f} +/- {chosen.cv_std:.4f} ({chosen.name}); "
          f"local score {score:.4f}")
