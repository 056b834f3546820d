"""Cut points for an ordinal task: the scores a level-2 candidate gives are cut into grades at
points fitted on OOF scores to maximise the pipeline's metric (quadratic kappa, where winners of
aptos2019 fitted them), instead of rounding at 0.5, 1.5, ...

Cut points are a rule of :mod:`foldstack.level2.decision` (:data:`RULE`, always fitted): each
candidate's CV scores fold k at cut points fitted without fold k, on level-two scores of models
that never saw fold k either; the cut points that go on to ``submit`` are then fitted on every
OOF score.
"""

from __future__ import annotations

import numpy as np

from foldstack.core.metrics import Metric, rounding_cuts
from foldstack.level2.decision import Rule

#: Candidate positions tried for one cut point per sweep (quantiles of the scores between its
#: neighbours), and the most sweeps over all cut points.
GRID, SWEEPS = 64, 5


def fit_cuts(score: np.ndarray, y: np.ndarray, n_classes: int, metric: Metric) -> np.ndarray:
    """Increasing cut points ``(n_classes - 1,)`` that maximise ``metric`` of the grades of
    ``score`` (``(n,)`` or ``(n, 1)``) against grade indices ``y``, starting from rounding.

    Coordinate ascent: each cut point in turn moves to the best of :data:`GRID` positions
    between its neighbours (so the cuts stay in order), until a sweep moves none. The metric is
    a step function of the cuts, which stalls a simplex (Nelder-Mead) whose first steps move no
    score across a cut; a search over the scores' own quantiles always finds the moves that count.
    The result never scores worse than rounding on these rows.
    """
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    cuts = rounding_cuts(n_classes)
    if not len(cuts) or not len(score):
        return cuts
    best = _score(score, y, n_classes, cuts, metric)
    for _ in range(SWEEPS):
        moved = False
        for i in range(len(cuts)):
            low = cuts[i - 1] if i else -np.inf
            high = cuts[i + 1] if i + 1 < len(cuts) else np.inf
            inside = np.unique(score[(score > low) & (score < high)])
            if len(inside) > GRID:
                inside = np.quantile(inside, np.linspace(0, 1, GRID))
            for position in inside:
                trial = cuts.copy()
                trial[i] = position
                value = _score(score, y, n_classes, trial, metric)
                if metric.better(value, best):
                    best, cuts, moved = value, trial, True
        if not moved:
            break
    return cuts


def _fit_modes(y: np.ndarray, score: np.ndarray, metric: Metric, modes: tuple[str, ...],
               n_classes: int) -> dict[str, np.ndarray]:
    """The rule's ``fit``: one mode, ``fitted``."""
    return {mode: fit_cuts(score, y, n_classes, metric) for mode in modes}


#: Cut points as a decision rule: rounding's, or fitted.
RULE = Rule("cuts", ("fitted",), rounding_cuts, _fit_modes)


def _score(score: np.ndarray, y: np.ndarray, n_classes: int, cuts: np.ndarray, metric: Metric) -> float:
    return metric(y, score[:, None], cuts, n_classes=n_classes)
