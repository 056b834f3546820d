"""Level two: blenders and stackers on the base models' OOF probabilities, and their registry.

The stage that scores them by cross-validation and writes the chosen one lives in
:mod:`foldstack.stack`.
"""

from foldstack.stacking.base import Level2Estimator
from foldstack.stacking.blend import BestSingle, MeanBlend, RankAverage, WeightedMeanBlend
from foldstack.stacking.candidates import Candidate, get, names, register
from foldstack.stacking.models import LightGBMStacker, LogisticStacker, summary_features

__all__ = [
    "BestSingle", "Candidate", "LightGBMStacker", "Level2Estimator", "LogisticStacker", "MeanBlend",
    "RankAverage", "WeightedMeanBlend", "get", "names", "register", "summary_features",
]
