"""Registry of level-2 candidates: a name maps to a factory that builds an unfitted estimator
from the pipeline config, and to the metrics it applies to.

Adding a candidate is one :func:`register` call; the stage never branches on a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from foldstack.core.config import WITH_FEATURES, PipelineConfig
from foldstack.core.metrics import Metric
from foldstack.core.registry import Registry
from foldstack.level2.base import Level2Estimator, StackError
from foldstack.level2.blend import BestSingle, CaruanaSelection, MeanBlend, RankAverage, WeightedMeanBlend
from foldstack.level2.stackers import LightGBMStacker, LogisticStacker, RidgeStacker


PROBABILITIES, SCORES, VALUES = "probabilities", "scores", "values"
#: A candidate that combines any model outputs: class probabilities and one number per model.
ANY_OUTPUT = frozenset({PROBABILITIES, SCORES, VALUES})


@dataclass(frozen=True)
class Candidate:
    """What the registry knows about one candidate.

    Attributes:
        name: registry name, as ``stack.candidates`` and ``stack.force`` write it.
        build: ``build(cfg) -> Level2Estimator``, unfitted.
        applies: ``applies(metric) -> bool``: whether the candidate is fair for that metric.
        outputs: what of the base models it combines (:func:`output_of`): class
            ``probabilities``, an ordinal task's ``scores``, a regression's ``values``.
        takes_features: whether it also takes table columns (``stack.features``: its estimator
            has a ``features`` parameter), scored as ``<name>+features`` beside ``<name>``.
    """

    name: str
    build: Callable[[PipelineConfig], Level2Estimator]
    applies: Callable[[Metric], bool] = lambda metric: True
    outputs: frozenset[str] = frozenset({PROBABILITIES})
    takes_features: bool = False

    def combines(self, task: str) -> bool:
        """Whether it combines the base models' predictions of ``task``."""
        return output_of(task) in self.outputs


def output_of(task: str) -> str:
    """What a task's base models predict: ``scores`` (ordinal), ``values`` (regression), else
    class ``probabilities``."""
    return {"ordinal": SCORES, "regression": VALUES}.get(task, PROBABILITIES)


# Listed in registration order: simple blends first.
_REGISTRY: Registry[Candidate] = Registry("stacking candidate", ordered=True)
register = _REGISTRY.register
names = _REGISTRY.names
get = _REGISTRY.get


def base_name(name: str) -> str:
    """The registered candidate of a leaderboard name (``lightgbm`` of ``lightgbm+features``)."""
    return name.removesuffix(WITH_FEATURES)


def with_features(name: str) -> bool:
    """Whether a leaderboard name is a candidate given ``stack.features``."""
    return name.endswith(WITH_FEATURES)


def build(name: str, cfg: PipelineConfig) -> Level2Estimator:
    """The unfitted estimator of a leaderboard name: the registered candidate, given
    ``stack.features`` where the name ends in ``+features``.

    Raises:
        StackError: ``+features`` of a candidate that takes none, or without ``stack.features``.
    """
    candidate = get(base_name(name))
    estimator = candidate.build(cfg)
    if not with_features(name):
        return estimator
    if not candidate.takes_features or cfg.stack.features is None:
        raise StackError(f"stack: {name!r}: {candidate.name!r} takes no table columns" if not candidate.takes_features
                         else f"stack: {name!r} needs stack.features")
    return estimator.set_params(features=cfg.stack.features)


def _lightgbm(summary_features: bool) -> Callable[[PipelineConfig], Level2Estimator]:
    def build(cfg: PipelineConfig) -> Level2Estimator:
        return LightGBMStacker(params=dict(cfg.stack.lightgbm), summary_features=summary_features,
                               seed=cfg.seed, max_negatives=cfg.stack.lightgbm_max_negatives)

    return build


register(Candidate("best_single", lambda cfg: BestSingle(metric=cfg.metric), outputs=ANY_OUTPUT))
register(Candidate("mean", lambda cfg: MeanBlend(), outputs=ANY_OUTPUT))
register(Candidate("weighted_mean", lambda cfg: WeightedMeanBlend(), outputs=ANY_OUTPUT))
register(Candidate("caruana", lambda cfg: CaruanaSelection(metric=cfg.metric, iterations=cfg.stack.caruana_iterations,
                                                           init=cfg.stack.caruana_init)))
register(Candidate("rank_average", lambda cfg: RankAverage(), applies=lambda metric: metric.ranks))
register(Candidate("logistic", lambda cfg: LogisticStacker(), takes_features=True))
register(Candidate("lightgbm", _lightgbm(summary_features=False), outputs=ANY_OUTPUT, takes_features=True))
register(Candidate("lightgbm_summary", _lightgbm(summary_features=True), takes_features=True))
register(Candidate("ridge", lambda cfg: RidgeStacker(), outputs=frozenset({VALUES})))
