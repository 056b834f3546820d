"""Twelve real Kaggle competitions, each from its own `pipelines/<slug>.yaml`, end to end on a tiny
fixture laid out exactly as the competition ships it (`tests/competitions.py`): download (a local
copy of the competition's files, untouched), folds, train, predict, stack, submit; then the
submission is checked against the competition's own rules and scored as the competition scores.

Only what a fixture must is replaced in each YAML: the source (a local folder instead of Kaggle),
the models (one small CNN at 16 px trained from scratch for 2 epochs instead of ImageNet
networks at 300+ px) and the number of folds (2: a fixture holds 6 images a class). Each run
prints its CV and the local score of its submission (`pytest -s` shows them).
"""

from __future__ import annotations

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


def tiny_pipeline(slug: str, public: Path) -> PipelineConfig:
    """``pipelines/<slug>.yaml`` with its source, models and fold count replaced for the fixture."""
    path = REPO / "pipelines" / f"{slug}.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["name"] == slug
    assert raw["data"]["source"] == {"type": "kaggle_competition", "competition": slug}
    raw["data"]["source"] = {"type": "local", "path": str(public)}
    raw["models"] = [TINY_MODEL]
    raw["folds"]["k"] = K
    return parse_pipeline(raw, source=str(path))


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
    cfg = tiny_pipeline(slug, fixture.public)
    paths = Paths.for_pipeline(cfg.name, tmp_path / "run")

    download.run(cfg, paths)
    folds.run(cfg, paths)
    train.run(cfg, paths, workers=1)
    predict.run(cfg, paths, workers=1)
    stack.run(cfg, paths)
    written = submit.run(cfg, paths)

    # The competition's files were read where they lie, never rewritten.
    assert competitions.fingerprint(fixture.public) == shipped

    sample = pd.read_csv(fixture.public / competition.sample, dtype=str, keep_default_na=False)
    submission = pd.read_csv(written, dtype=str, keep_default_na=False)
    competition.check(submission, sample, fixture)

    answers = pd.read_csv(fixture.private / competition.answers, dtype=str, keep_default_na=False)
    score = competition.grade(submission, answers)
    low, high = RANGES[cfg.metric]
    assert low <= score <= high, score
    chosen = stack_output.read(paths.stack)
    assert chosen.metric == cfg.metric
    print(f"\n{slug}: CV {cfg.metric} {chosen.cv_mean:.4f} +/- {chosen.cv_std:.4f} ({chosen.name}); "
          f"local score {score:.4f}")
