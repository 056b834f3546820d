"""The hard embedded benchmark (``digits_hard``): few labels, many test images with answers, every
image occluded and noisy, the same files on every build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from foldstack.data import sources
from foldstack.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[1]


def _image(folder: Path, split: str, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(folder / split / f"{image_id}.png"))


def test_few_labels_per_class_and_every_other_digit_a_test_image_with_its_answer(tmp_path: Path) -> None:
    sources.write_digits_hard(tmp_path)
    train = pd.read_csv(tmp_path / "train.csv", dtype={"id": str})
    sample = pd.read_csv(tmp_path / "sample_submission.csv", dtype={"id": str})
    solution = pd.read_csv(tmp_path / "solution.csv", dtype={"id": str})

    assert (train["label"].value_counts() == sources.HARD_LABELLED_PER_CLASS).all() and len(train) == 200
    assert len(sample) == 1797 - 200 and not set(sample["id"]) & set(train["id"])
    assert solution["id"].tolist() == sample["id"].tolist()
    assert solution["label"].value_counts().min() > 150  # every class among the test images
    assert sorted(p.stem for p in (tmp_path / "test").glob("*.png")) == sorted(sample["id"])


def test_every_image_is_occluded_and_noisy_and_every_build_is_the_same(tmp_path: Path) -> None:
    sources.write_digits_hard(tmp_path / "a")
    sources.write_digits_hard(tmp_path / "b")
    clean = np.rint(load_digits().images * (255.0 / 16.0))
    side = sources.HARD_ERASED_SIDE
    for split in ("train", "test"):
        for path in sorted((tmp_path / "a" / split).glob("*.png"))[:50]:
            image = _image(tmp_path / "a", split, path.stem)
            assert (image == _image(tmp_path / "b", split, path.stem)).all()
            original = clean[int(path.stem.split("_")[1])]
            # noise: most pixels moved; occlusion: some side x side square is all background
            assert (image != original).mean() > 0.5
            assert any((image[r:r + side, c:c + side] == 0).all() for r in range(9 - side) for c in range(9 - side))


def test_the_benchmark_pipeline_loads_and_its_limit_keeps_a_few_labels_a_class(tmp_path: Path) -> None:
    cfg = load_pipeline(REPO / "pipelines" / "digits-hard.yaml")
    assert cfg.data.source.dataset == "digits_hard" and cfg.data.solution == "solution.csv"
    sources.write_digits_hard(tmp_path, limit=300)
    train = pd.read_csv(tmp_path / "train.csv")
    assert (train["label"].value_counts() == 3).all()
    assert len(pd.read_csv(tmp_path / "sample_submission.csv")) == 300 - 30
