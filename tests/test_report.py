"""The report's error analysis and page, on hand-made OOF probabilities (milliseconds). The
whole stage runs, and its page is opened in Chromium, in tests/test_make.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foldstack.plots import heatmaps
from foldstack.stages.report import Page, cam_rows, confused_pairs, per_class, worst_rows

NAMES = ["a", "b", "c"]
# Rows 0-2 right; row 3 (a) called b at 0.9, row 4 (a) called b at 0.6, row 5 (c) called a at 0.7.
Y = np.array([0, 1, 2, 0, 0, 2])
PROBA = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8],
                  [0.05, 0.9, 0.05], [0.3, 0.6, 0.1], [0.7, 0.1, 0.2]])


def test_confused_pairs_most_first_with_their_share() -> None:
    pairs = confused_pairs(Y, PROBA, NAMES)
    assert pairs[["true", "predicted", "count"]].values.tolist() == [["a", "b", 2], ["c", "a", 1]]
    assert pairs["share of true class"].tolist() == [2 / 3, 1 / 2]


def test_worst_rows_are_the_most_confidently_wrong() -> None:
    assert worst_rows(Y, PROBA, limit=2, multilabel=False).tolist() == [3, 5]


def test_cam_rows_each_class_worst_then_confident_right_ones() -> None:
    assert cam_rows(Y, PROBA, n_right=2).tolist() == [3, 5, 0, 2]


def test_per_class_scores() -> None:
    table = per_class(Y, PROBA, NAMES, multilabel=False)
    assert table["support"].tolist() == [3, 1, 2]
    assert table["recall"].tolist() == [1 / 3, 1.0, 0.5]


def test_page_embeds_pictures_and_says_which_are_missing(tmp_path: Path) -> None:
    picture = heatmaps.overlay(np.zeros((8, 8, 3), np.uint8), np.eye(8), tmp_path / "cam.png", title="cam")
    page = Page("t")
    page.section("here", picture=picture)
    page.section("gone", picture=tmp_path / "missing.png")
    text = page.render()
    assert text.count('src="data:image/png;base64,iVBOR') == 1 and "missing.png not found" in text


def test_multilabel_rows_are_judged_at_the_stacks_thresholds() -> None:
    """The stack's tables use the thresholds its CV chose (chosen.json), not 0.5: class b at 0.3
    turns row 1's 0.4 into a hit and row 2's 0.35 into a false alarm."""
    y = np.array([[1, 0], [1, 1], [0, 0]])
    proba = np.array([[0.9, 0.1], [0.8, 0.4], [0.2, 0.35]])
    at_half = per_class(y, proba, ["a", "b"], multilabel=True)
    fitted = per_class(y, proba, ["a", "b"], multilabel=True, thresholds=np.array([0.5, 0.3]))
    assert at_half["recall"].tolist() == [1.0, 0.0] and fitted["recall"].tolist() == [1.0, 1.0]
    assert fitted["precision"].tolist() == [1.0, 0.5]
    assert worst_rows(y, proba, limit=3, multilabel=True).tolist() == [1]
    assert worst_rows(y, proba, limit=3, multilabel=True, thresholds=np.array([0.5, 0.3])).tolist() == [2]
