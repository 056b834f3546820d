"""Level two: blenders and stackers on the base models' OOF probabilities, and their registry.

:mod:`foldstack.level2.selection` scores them by cross-validation on the base models' folds;
the stack stage (:mod:`foldstack.stages.stack`) runs it and writes the chosen one.
"""

from foldstack.level2.base import Level2Estimator
from foldstack.level2.blend import BestSingle, CaruanaSelection, MeanBlend, RankAverage, WeightedMeanBlend
from foldstack.level2.candidates import Candidate, get, names, register
from foldstack.level2.stackers import LightGBMStacker, LogisticStacker, summary_features

__all__ = [
    "BestSingle", "CaruanaSelection", "Candidate", "LightGBMStacker", "Level2Estimator", "LogisticStacker", "MeanBlend",
    "RankAverage", "WeightedMeanBlend", "get", "names", "register", "summary_features",
]
