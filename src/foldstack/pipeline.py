"""Loading a pipeline: the YAML parsed into a :class:`~foldstack.core.config.PipelineConfig` and
checked against what the registries hold (backbones, metrics, stacking candidates) and what
albumentations can build. The command line and the tests load pipelines here; stages receive
the loaded config."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

from foldstack import backbones
from foldstack.core import config, metrics
from foldstack.core.config import BackboneSizes, Known, PipelineConfig
from foldstack.core.errors import FoldstackError
from foldstack.level2 import candidates
from foldstack.training.augment import check_channels, compose
from foldstack.training.device_forms import check_device


class BackboneNames(Mapping[str, BackboneSizes]):
    """Every registered backbone's sizes; a prefixed name (``hub:<preset>``) is resolved when
    asked for, and one that cannot be (a missing preset, one of a class the family does not know)
    raises ValueError with the family's one line, which validation reports under its key."""

    def __getitem__(self, name: str) -> BackboneSizes:
        try:
            spec = backbones.get(name)
        except backbones.UnknownBackboneError:
            raise KeyError(name) from None
        except FoldstackError as error:
            raise ValueError(str(error)) from None
        return BackboneSizes(spec.default_size, spec.min_size, drop_path=spec.drop_path is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(backbones.names())

    def __len__(self) -> int:
        return len(backbones.names())


def known() -> Known:
    """The names a pipeline may use, from the registries."""
    return Known(
        backbones=BackboneNames(),
        metrics=metrics.names(),
        candidates=candidates.names(),
        check_augment=compose,
        grade_metrics=[name for name in metrics.names() if metrics.get(name).on_grades],
        value_metrics=[name for name in metrics.names() if metrics.get(name).on_values],
        check_device_augment=check_device,
        callable_metric=_callable_metric,
        check_channels=check_channels,
    )


def _callable_metric(path: str, greater_is_better: bool, needs: str) -> str:
    """The metric name of a pipeline's callable, once it imports (registered at load)."""
    name = metrics.callable_name(path, greater_is_better, needs)
    metrics.get(name)
    return name


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate ``path``; a ConfigError names the file, the key and the value."""
    return config.load_pipeline(path, known())


def parse_pipeline(raw: dict, source: str = "pipeline") -> PipelineConfig:
    """Validate a pipeline given as a mapping; a ConfigError names ``source``, the key and the value."""
    return config.parse_pipeline(raw, known(), source)
