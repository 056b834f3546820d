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
from foldstack.pipeline import load_pipeline, parse_pipeline
from foldstack.stages import download, folds, init, predict, stack, submit, train

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
