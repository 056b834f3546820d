"""Loading a pipeline: the YAML parsed into a :class:`~foldstack.core.config.PipelineConfig` and
checked against what the registries hold (backbones, metrics, stacking candidates) and what
albumentations can build. The command line and the tests load pipelines here; stages receive
the loaded config."""

from __future__ import annotations

from pathlib import Path

from foldstack import backbones
from foldstack.core import config, metrics
from foldstack.core.config import BackboneSizes, Known, PipelineConfig
from foldstack.level2 import candidates
from foldstack.training.augment import compose
from foldstack.training.device_forms import check_device


def known() -> Known:
    """The names a pipeline may use, from the registries."""
    return Known(
        backbones={name: BackboneSizes(backbones.get(name).default_size, backbones.get(name).min_size)
                   for name in backbones.names()},
        metrics=metrics.names(),
        candidates=candidates.names(),
        check_augment=compose,
        grade_metrics=[name for name in metrics.names() if metrics.get(name).on_grades],
        value_metrics=[name for name in metrics.names() if metrics.get(name).on_values],
        check_device_augment=check_device,
    )


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate ``path``; a ConfigError names the file, the key and the value."""
    return config.load_pipeline(path, known())


def parse_pipeline(raw: dict, source: str = "pipeline") -> PipelineConfig:
    """Validate a pipeline given as a mapping; a ConfigError names ``source``, the key and the value."""
    return config.parse_pipeline(raw, known(), source)
