"""The pipeline YAML, parsed once into validated, immutable objects.

Every stage receives a :class:`PipelineConfig`; nothing writes to it afterwards. An invalid file
raises :class:`ConfigError` with one line that names the file, the key, the value and what is
allowed.

Names that refer to a registry (a backbone, a metric, a stacking candidate) and albumentations
pipelines are checked against a :class:`Known`, handed to validation as its context, so this
module needs none of the packages that fill the registries: ``foldstack.pipeline`` builds the
``Known`` and is the one place pipelines are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from foldstack.core.errors import FoldstackError, one_line


class ConfigError(FoldstackError, ValueError):
    """A pipeline file that cannot be used; the message is one line meant for a person."""


@dataclass(frozen=True)
class BackboneSizes:
    """What the config needs to know of a backbone: its default and smallest input size."""

    default: int
    minimum: int


@dataclass(frozen=True)
class Known:
    """The registries' contents, against which a pipeline's names are validated.

    Attributes:
        backbones: every backbone name and its sizes.
        metrics: every metric name.
        candidates: every stacking candidate name.
        check_augment: raises on a list of transforms albumentations cannot build.
    """

    backbones: Mapping[str, BackboneSizes]
    metrics: Sequence[str]
    candidates: Sequence[str]
    check_augment: Callable[[list[dict[str, Any]]], Any]


def _known(info: ValidationInfo) -> Known:
    known = (info.context or {}).get("known")
    if known is None:
        raise ValueError("a pipeline is validated through foldstack.pipeline, which knows the registries")
    return known


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- where the data comes from -------------------------------------------------------------------


class EmbeddedSource(_Frozen):
    """A competition built from data that ships with a package (no network, no credentials)."""

    type: Literal["embedded"]
    dataset: Literal["digits", "digits_hard"] = Field(
        description="digits: scikit-learn's 1,797 digits, an 80/20 split; digits_hard: 20 labelled a class, "
                    "the rest the test set, every image occluded and noisy")
    limit: int | None = Field(None, ge=20, description="keep only this many images (tiny test runs)")


class KaggleCompetitionSource(_Frozen):
    type: Literal["kaggle_competition"]
    competition: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")


class KaggleDatasetSource(_Frozen):
    type: Literal["kaggle_dataset"]
    dataset: str = Field(pattern=r"^[\w.-]+/[\w.-]+$", description="owner/name")


class LocalSource(_Frozen):
    type: Literal["local"]
    path: Path


Source = Annotated[
    Union[EmbeddedSource, KaggleCompetitionSource, KaggleDatasetSource, LocalSource],
    Field(discriminator="type"),
]


class DataConfig(_Frozen):
    """Where the data comes from and how the competition lays it out on disk.

    ``layout: csv`` is a table of ids and labels beside a folder of images; ``layout: folders`` is
    one sub-folder of ``train_dir`` per class. Test ids always come from the sample submission.
    """

    source: Source
    layout: Literal["csv", "folders"] = "csv"
    train_csv: str = "train.csv"
    id_column: str = "id"
    label_column: str = "label"
    train_dir: str = "train"
    test_dir: str = "test"
    extension: str = Field(".png", pattern=r"^\.[A-Za-z0-9]+$")
    ids_have_extension: bool = False
    sample_submission: str = "sample_submission.csv"
    solution: str | None = Field(None, description="test answers, for a local leaderboard score only")


# --- folds, augmentation, models -------------------------------------------------------------------


class FoldsConfig(_Frozen):
    k: int = Field(5, ge=2, le=50)
    seed: int = 42
    strategy: Literal["stratified", "grouped"] = "stratified"
    group_column: str | None = None

    @model_validator(mode="after")
    def _group_column_for_grouped(self) -> FoldsConfig:
        if self.strategy == "grouped" and not self.group_column:
            raise ValueError("strategy 'grouped' needs group_column")
        return self


Transforms = list[dict[str, Any]]


class AugmentConfig(_Frozen):
    """Albumentations pipelines in albumentations' own serialisation (``A.to_dict`` per transform).

    ``train`` and ``valid`` are lists of transforms; ``tta`` is a list of views, each a list of
    transforms (an empty list is the plain image). Predictions average over the TTA views.
    """

    train: Transforms = []
    valid: Transforms = []
    tta: list[Transforms] = [[]]

    @field_validator("train", "valid")
    @classmethod
    def _builds(cls, value: Transforms, info: ValidationInfo) -> Transforms:
        _check_albumentations(value, _known(info))
        return value

    @field_validator("tta")
    @classmethod
    def _views_build(cls, value: list[Transforms], info: ValidationInfo) -> list[Transforms]:
        if not value:
            raise ValueError("needs at least one view ([] is the plain image)")
        for view in value:
            _check_albumentations(view, _known(info))
        return value


def _check_albumentations(transforms: Transforms, known: Known) -> None:
    try:
        known.check_augment(transforms)
    except Exception as error:  # albumentations raises many types for a bad dict
        raise ValueError(f"not a valid albumentations pipeline ({error})") from None


Regime = Literal["features", "finetune", "partial", "scratch"]


class ModelConfig(_Frozen):
    """One base model: a backbone, its weights, and how it is fine-tuned.

    Regimes: ``features`` trains a head on frozen pooled features; ``finetune`` trains the head
    with the backbone frozen, then unfreezes (``unfreeze``) at ``finetune_lr``; ``partial`` cuts
    the backbone at ``cut_layer`` and trains dense layers on the frozen rest; ``scratch`` trains
    everything from the start.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    backbone: str
    weights: str = Field("imagenet", description="imagenet, none, or a path to a weights file")
    image_size: int | None = Field(None, ge=8, le=1024, validate_default=True,
                                   description="default: the backbone's own size")
    regime: Regime = "finetune"
    epochs: int = Field(10, ge=1)
    head_epochs: int = Field(2, ge=0, description="finetune: epochs with the backbone frozen")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    finetune_lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    unfreeze: Literal["all"] | int | str = Field(
        "all", description="finetune: 'all', the top N layers, or a layer name to unfreeze from"
    )
    cut_layer: str | None = Field(None, description="partial: the layer to cut the backbone at")
    dense_units: list[int] = Field([256], description="partial: the dense layers on the cut")
    patience: int = Field(3, ge=1, description="early stopping on the fold's metric")
    class_weights: bool = False

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str, info: ValidationInfo) -> str:
        return _one_of(value, list(_known(info).backbones), "backbone")

    @field_validator("image_size")
    @classmethod
    def _fits_backbone(cls, value: int | None, info: ValidationInfo) -> int | None:
        """The backbone's default size where none is given; too small for it is an error now
        rather than minutes into training."""
        # `backbone` is validated first (field order), and is absent from info.data when unknown.
        backbone = info.data.get("backbone")
        if backbone is None:
            return value
        sizes = _known(info).backbones[backbone]
        if value is None:
            return sizes.default
        if value < sizes.minimum:
            raise ValueError(f"backbone {backbone!r} needs at least {sizes.minimum}")
        return value


class StackConfig(_Frozen):
    """Level two: candidates scored by CV on the base models' folds; the best goes on.

    ``lightgbm`` holds LightGBM parameters over the stacker's defaults (e.g. ``num_leaves``,
    ``num_iterations``, ``early_stopping_round``, ``num_threads``).

    ``lightgbm_max_negatives`` bounds LightGBM's shared layout (over 10 classes: one row per
    sample and class, nearly all negatives); see ``LightGBMStacker``. Its default keeps the fit
    as good as with every row and much cheaper (measured in benchmarks/RESULTS.md).

    ``caruana_iterations`` and ``caruana_init`` shape the ``caruana`` candidate (greedy ensemble
    selection on the pipeline's metric; see ``CaruanaSelection``).
    """

    candidates: list[str] | None = Field(None, min_length=1,
                                         description="default: every registered candidate")
    force: str | None = Field(None, description="submit this candidate whatever its CV")
    lightgbm: dict[str, Any] = {}
    lightgbm_max_negatives: int | None = Field(
        200_000, ge=1, description="the most negative (sample, class) rows LightGBM trains on in the "
                                   "shared layout, sampled at random; null keeps all")
    caruana_iterations: int = Field(25, ge=1, le=1000, description="caruana: models added in all, with replacement")
    caruana_init: int = Field(1, ge=1, description="caruana: start from this many best single models")

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        for name in value or []:
            _one_of(name, list(_known(info).candidates), "candidate", quote=True)
        return value

    @field_validator("force")
    @classmethod
    def _known_force(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _one_of(value, list(_known(info).candidates), "candidate", quote=True)
        return value

    @model_validator(mode="after")
    def _force_among_candidates(self) -> StackConfig:
        if self.force and self.candidates and self.force not in self.candidates:
            raise ValueError(f"force {self.force!r} is not among candidates: {', '.join(self.candidates)}")
        if self.caruana_init > self.caruana_iterations:
            raise ValueError(f"caruana_init ({self.caruana_init}) exceeds caruana_iterations ({self.caruana_iterations})")
        return self


class SubmissionConfig(_Frozen):
    """How the submission file is laid out; it must match the sample submission.

    ``label``: one column of class names; ``probabilities``: one column per class;
    ``binary``: one column with the positive class's probability; ``multilabel``: one column of
    space-separated class names (those with probability >= 0.5).
    """

    format: Literal["label", "probabilities", "binary", "multilabel"] = "label"


class PipelineConfig(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Literal["binary", "multiclass", "multilabel"] = "multiclass"
    metric: str
    seed: int = 42
    data: DataConfig
    folds: FoldsConfig = FoldsConfig()
    augment: AugmentConfig = AugmentConfig()
    models: list[ModelConfig] = Field(min_length=1)
    stack: StackConfig = StackConfig()
    submission: SubmissionConfig = SubmissionConfig()

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str, info: ValidationInfo) -> str:
        return _one_of(value, list(_known(info).metrics), "metric")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: list[ModelConfig]) -> list[ModelConfig]:
        names = [model.name for model in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"model names must be unique; repeated: {', '.join(repeated)}")
        return value

    def model(self, name: str) -> ModelConfig:
        """The model called ``name``; a ConfigError lists the ones that exist."""
        for model in self.models:
            if model.name == name:
                return model
        raise ConfigError(f"pipeline {self.name!r} has no model {name!r}; it has: "
                          f"{', '.join(m.name for m in self.models)}")


def _one_of(value: str, known: list[str], kind: str, quote: bool = False) -> str:
    if value not in known:
        name = f" {value!r}" if quote else ""
        raise ValueError(f"unknown {kind}{name}; known: {', '.join(known)}")
    return value


def parse_pipeline(raw: dict, known: Known, source: str = "pipeline") -> PipelineConfig:
    """Validate a pipeline given as a mapping (a parsed YAML file) against ``known``.

    Raises:
        ConfigError: ``raw`` breaks a rule; one line naming ``source``, the key and the value.
    """
    try:
        return PipelineConfig.model_validate(raw, context={"known": known})
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error, raw)}") from None


def load_pipeline(path: str | Path, known: Known) -> PipelineConfig:
    """Read and validate a pipeline YAML file against ``known``.

    Raises:
        ConfigError: the file is missing, is not YAML, or breaks a rule; one line naming the key.
    """
    path = Path(path)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        hint = f"; available: {', '.join(available)}" if available else ""
        raise ConfigError(f"{path}: pipeline file not found{hint}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {one_line(str(error))}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got {type(raw).__name__}")
    return parse_pipeline(raw, known, str(path))


def _describe(error: ValidationError, raw: dict) -> str:
    """The first validation problem as 'key = value: what is wrong' (plus a count of others)."""
    problems = error.errors()
    first = problems[0]
    # Drop the tags pydantic inserts into the path for a discriminated union (data.source.embedded).
    loc = [part for part in first["loc"] if part not in _SOURCE_TAGS]
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "union_tag_invalid":
        loc.append(first["ctx"]["discriminator"].strip("'"))
        message = f"must be one of {first['ctx']['expected_tags']}"
    key = ".".join(str(part) for part in loc) or "(top level)"
    if first["type"] == "missing":
        text = f"{key}: required key is missing"
    else:
        text = f"{key} = {_value_at(raw, loc)!r}: {message}"
    more = len(problems) - 1
    return one_line(text + (f" (and {more} more problem{'s' * (more > 1)})" if more else ""))


_SOURCE_TAGS = {"embedded", "kaggle_competition", "kaggle_dataset", "local"}


def _value_at(raw: Any, loc: list) -> Any:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw

