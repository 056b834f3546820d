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

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal, Mapping, Sequence, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from foldstack.core.errors import FoldstackError, one_line


class ConfigError(FoldstackError, ValueError):
    """A pipeline file that cannot be used; the message is one line meant for a person."""


@dataclass(frozen=True)
class BackboneSizes:
    """What the config needs to know of a backbone: its default and smallest input size."""

    default: int
    minimum: int
    drop_path: bool = False


@dataclass(frozen=True)
class Known:
    """The registries' contents, against which a pipeline's names are validated.

    Attributes:
        backbones: every backbone name and its sizes; a family's prefixed name (``hub:<preset>``)
            is in it when it resolves, and asking raises ValueError (one line) when it cannot.
        metrics: every metric name.
        candidates: every stacking candidate name.
        check_augment: raises on a list of transforms albumentations cannot build.
        grade_metrics: the metrics that score an ordinal score's grades (``task: ordinal``).
        value_metrics: the metrics that score a regression's values (``task: regression``).
        check_device_augment: raises (one line naming it) on a transform of a list that has no
            device form (``training.device_forms.device_steps``); None checks nothing.
        callable_metric: ``(path, greater_is_better, needs) -> name`` of a pipeline's own
            metric, raising ValueError (one line) where it cannot be imported.
        check_channels: ``(transforms, channels)``, raising ValueError (one line naming it) on a
            transform that cannot take images of that many channels (array images); None
            checks nothing.
    """

    backbones: Mapping[str, BackboneSizes]
    metrics: Sequence[str]
    candidates: Sequence[str]
    check_augment: Callable[[list[dict[str, Any]]], Any]
    grade_metrics: Sequence[str] = ()
    value_metrics: Sequence[str] = ()
    check_device_augment: Callable[[list[dict[str, Any]]], Any] | None = None
    callable_metric: Callable[[str, bool, str], str] | None = None
    check_channels: Callable[[list[dict[str, Any]], int], Any] | None = None


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


class LayoutConfig(_Frozen):
    """How a labelled dataset lays out its training images and labels on disk.

    Layouts: ``csv`` is a table of ids and labels (one ``label_column``, or one-hot
    ``label_columns``) beside a folder of images; ``folders`` is one sub-folder of ``train_dir``
    per class; ``file_names`` takes each train image's label from its file name
    (``label_pattern``).
    """

    layout: Literal["csv", "folders", "file_names"] = "csv"
    train_csv: str = "train.csv"
    id_column: str = "id"
    label_column: str = "label"
    label_columns: list[str] | None = Field(
        None, min_length=2, description="csv layout: one-hot (0/1) label columns, each named after its class")
    label_pattern: str | None = Field(
        None, validate_default=True, description="file_names layout: a regex with a named group 'label', searched in each file name")
    train_dir: str = "train"
    extension: str = Field(".png", pattern=r"^\.[A-Za-z0-9]+$")
    ids_have_extension: bool = False

    @field_validator("label_columns")
    @classmethod
    def _columns_of_a_table(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return value
        layout = info.data.get("layout")
        if layout != "csv":
            raise ValueError(f"label_columns is for layout 'csv', not {layout!r}")
        if len(set(value)) != len(value):
            raise ValueError("label columns must be distinct")
        return value

    @field_validator("label_pattern")
    @classmethod
    def _pattern_with_label(cls, value: str | None, info: ValidationInfo) -> str | None:
        layout = info.data.get("layout")
        if value is None:
            if layout == "file_names":
                raise ValueError("layout 'file_names' needs label_pattern, e.g. '^(?P<label>cat|dog)\\.'")
            return value
        if layout != "file_names":
            raise ValueError(f"label_pattern is for layout 'file_names', not {layout!r}")
        try:
            compiled = re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression ({error})") from None
        if "label" not in compiled.groupindex:
            raise ValueError("needs a named group 'label', e.g. '^(?P<label>cat|dog)\\.'")
        return value


class ExtraData(LayoutConfig):
    """An external labelled dataset (``data.extra``): its rows join the training side of every
    fold, never a validation fold, the OOF file or the CV.

    Read where it lies (``source``: a local folder), or downloaded by ``download`` from Kaggle
    (``kaggle_dataset``, ``kaggle_competition``: into a folder of its own, ``Paths.extra_data``),
    laid out by the same keys as the main data; ``label_map`` maps each of its labels onto a
    scored class (empty: its labels are the scored classes' names).
    """

    source: Annotated[Union[LocalSource, KaggleCompetitionSource, KaggleDatasetSource], Field(discriminator="type")]
    label_map: dict[str, str] = {}


class ScaleRange(_Frozen):
    """A fixed range of array values mapped onto 0-255 (``min`` to 0, ``max`` to 255; outside it clipped)."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> "ScaleRange":
        if not self.max > self.min:
            raise ValueError(f"max ({self.max:g}) must be above min ({self.min:g})")
        return self


ImageSource = Literal["files", "arrays", "column"]
#: ``scale``'s named rules: each image's own minimum and maximum, over all its channels or per channel.
ScaleRule = Literal["per_image", "per_channel"]
#: The extension of every array file (``image_source: arrays``; a ``column`` source's bands are
#: written as such files by ``download``).
ARRAY_EXTENSIONS = (".npy", ".npz")


class DataConfig(LayoutConfig):
    """Where the data comes from and how the competition lays it out on disk (:class:`LayoutConfig`).

    Test ids come from ``test_csv`` when it is set, else from the sample submission; the
    submission follows the sample submission's order either way. ``extra``: external labelled
    datasets (:class:`ExtraData`).

    ``image_source`` (README "Array images"): ``files``, image files; ``arrays``, one ``.npy`` or
    ``.npz`` per id (``HxW`` or ``HxWxC``, any dtype) in the image folders, ``channels`` of them,
    scaled to 0-255 by ``scale``; ``column``, the table's ``bands`` columns (one list of
    ``band_shape`` pixel values per band and row) stacked into channels, written as ``.npy``
    files by ``download``.
    """

    source: Source
    train_label: str | None = Field(None, description="csv layout: a finer label column the networks train on; "
                                                      "label_map sums its classes onto the scored ones")
    label_map: dict[str, str] = Field({}, description="with train_label: each fine class -> its scored class")
    test_dir: str = "test"
    test_csv: str | None = Field(None, description="a table of test ids (id_column); default: the sample submission")
    sample_submission: str = "sample_submission.csv"
    solution: str | None = Field(None, description="test answers, for a local leaderboard score only")
    unpack: bool = Field(True, description="download: unpack every archive inside the downloaded files (.zip, .7z, .tar, .tar.gz, .gz), once")
    extra: list[ExtraData] = Field([], description="external labelled datasets for the training side of every fold")
    image_source: ImageSource = Field("files", description="files (image files), arrays (.npy/.npz per id), "
                                                           "column (pixel lists in the table's band columns)")
    channels: int | None = Field(None, ge=1, le=64, description="arrays: the channels of every array; column: "
                                                                 "the number of bands (default); files: 3")
    scale: ScaleRule | ScaleRange | None = Field(
        None, description="arrays, column: to 0-255 by {min, max}, per_image or per_channel (min-max)")
    bands: list[str] | None = Field(None, min_length=1, description="column: the table columns, one per channel")
    band_shape: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = Field(
        None, description="column: [height, width] of each band's list")

    @field_validator("scale", mode="before")
    @classmethod
    def _a_rule_or_a_range(cls, value: Any) -> Any:
        """One line for either form (not one per member of the union)."""
        if value is None or isinstance(value, ScaleRange) or value in ("per_image", "per_channel"):
            return value
        if not isinstance(value, dict):
            raise ValueError("per_image, per_channel or {min: .., max: ..}")
        try:
            return ScaleRange.model_validate(value)
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            message = problem["msg"].removeprefix("Value error, ")
            raise ValueError(f"{where + ': ' if where else ''}{message}; per_image, per_channel or "
                             "{min: .., max: ..}") from None

    @model_validator(mode="before")
    @classmethod
    def _arrays_are_npy(cls, value: Any) -> Any:
        """Array sources default to ``.npy`` files (a ``column`` source writes them)."""
        if isinstance(value, dict) and value.get("image_source") in ("arrays", "column") and "extension" not in value:
            return {**value, "extension": ".npy"}
        return value

    @model_validator(mode="after")
    def _fine_labels(self) -> "DataConfig":
        """``train_label`` and its ``label_map`` go together, on a table, without external rows
        (those are labelled with scored classes only)."""
        if self.train_label is None:
            if self.label_map:
                raise ValueError("label_map is for train_label (an external dataset has its own, under data.extra)")
            return self
        if not self.label_map:
            raise ValueError(f"train_label {self.train_label!r} needs label_map: each fine class -> its scored class")
        if self.layout != "csv" or self.label_columns is not None:
            raise ValueError("train_label is a column of the train table: layout 'csv' with one label_column")
        if self.extra:
            raise ValueError("train_label: not with data.extra (external rows have no fine label)")
        return self

    @model_validator(mode="after")
    def _source_keys(self, info: ValidationInfo) -> "DataConfig":
        source = self.image_source
        if info.context is not None:
            # For the augment and models checks (validated after data): the images' channels.
            info.context["channels"] = self.channels if source == "arrays" else \
                len(self.bands) if source == "column" and self.bands else None
        if source == "files":
            for key in ("channels", "scale", "bands", "band_shape"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is for image_source 'arrays' or 'column', not 'files'")
            return self
        if self.scale is None:
            raise ValueError(f"image_source {source!r} needs scale: {{min: .., max: ..}}, per_image or per_channel")
        if self.extension not in ARRAY_EXTENSIONS if source == "arrays" else self.extension != ".npy":
            allowed = ARRAY_EXTENSIONS if source == "arrays" else (".npy",)
            raise ValueError(f"extension {self.extension!r}: image_source {source!r} reads {' or '.join(allowed)}")
        if source == "arrays":
            if self.channels is None:
                raise ValueError("image_source 'arrays' needs channels: every array's channel count")
            if self.bands is not None or self.band_shape is not None:
                raise ValueError("bands and band_shape are for image_source 'column', not 'arrays'")
            return self
        if self.bands is None or self.band_shape is None:
            raise ValueError("image_source 'column' needs bands (the table's columns) and band_shape [height, width]")
        if self.channels not in (None, len(self.bands)):
            raise ValueError(f"channels is {self.channels}, but bands lists {len(self.bands)}")
        if self.test_csv is None:
            raise ValueError("image_source 'column' needs test_csv: the table whose bands are the test images")
        if self.layout != "csv":
            raise ValueError(f"image_source 'column' reads a table: layout 'csv', not {self.layout!r}")
        object.__setattr__(self, "channels", len(self.bands))
        return self

    @property
    def image_channels(self) -> int:
        """The channels of every image the caches hold: 3 (RGB) for image files."""
        return 3 if self.channels is None else self.channels


# --- folds, augmentation, models -------------------------------------------------------------------


class FoldsConfig(_Frozen):
    """How the train table is split into K folds (see :mod:`foldstack.data.splits`).

    ``stratified`` balances every class over the folds (multilabel: iterative stratification of
    every label); ``grouped`` keeps each value of ``group_column`` (a train table column, e.g. a
    patient id) in one fold; ``stratified_grouped`` does both as far as the groups allow.
    """

    k: int = Field(5, ge=2, le=50)
    seed: int = 42
    strategy: Literal["stratified", "grouped", "stratified_grouped"] = "stratified"
    group_column: str | None = Field(None, description="grouped strategies: the train table's column of groups")

    @model_validator(mode="after")
    def _group_column_for_grouped(self) -> FoldsConfig:
        if self.strategy in ("grouped", "stratified_grouped") and not self.group_column:
            raise ValueError(f"strategy {self.strategy!r} needs group_column")
        return self


Transforms = list[dict[str, Any]]


AugmentOn = Literal["cpu", "device", "auto"]


class AugmentConfig(_Frozen):
    """Albumentations pipelines in albumentations' own serialisation (``A.to_dict`` per transform).

    ``train`` and ``valid`` are lists of transforms; ``tta`` is a list of views, each a list of
    transforms (an empty list is the plain image). Predictions average over the TTA views.

    ``on`` says where the ``train`` transforms run: ``cpu``, albumentations in the loader's
    threads; ``device``, their Keras forms (``training.device_forms.device_steps``) inside the
    compiled training step, the loader only gathering uint8 rows; ``auto``, the device where a
    GPU is present and every train transform has a device form, else the CPU. Validation and
    TTA views always run on the CPU, and are never random.
    """

    train: Transforms = []
    valid: Transforms = []
    tta: list[Transforms] = [[]]
    on: AugmentOn = Field("auto", description="where the train transforms run: cpu, device (Keras layers in "
                                              "the training step), auto (device where a GPU is present)")

    @field_validator("train", "valid")
    @classmethod
    def _builds(cls, value: Transforms, info: ValidationInfo) -> Transforms:
        _check_albumentations(value, _known(info))
        _check_channels(value, info)
        if info.field_name == "train" and info.context is not None:
            # For ModelConfig's `augment_on` check: `augment` is validated before `models`.
            info.context["augment_train"] = value
        return value

    @field_validator("tta")
    @classmethod
    def _views_build(cls, value: list[Transforms], info: ValidationInfo) -> list[Transforms]:
        if not value:
            raise ValueError("needs at least one view ([] is the plain image)")
        for view in value:
            _check_albumentations(view, _known(info))
            _check_channels(view, info)
        return value

    @field_validator("on")
    @classmethod
    def _device_forms(cls, value: AugmentOn, info: ValidationInfo) -> AugmentOn:
        if value == "device" and "train" in info.data:
            _check_device(info.data["train"], _known(info), "augment.train")
        return value

    @model_serializer(mode="wrap")
    def _omit_default(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``on`` is left out of the dump while ``auto``, so the fingerprints of folds trained
        before the key existed stay valid."""
        dumped = handler(self)
        return {key: value for key, value in dumped.items() if not (key == "on" and value == "auto")}


def _check_albumentations(transforms: Transforms, known: Known) -> None:
    try:
        known.check_augment(transforms)
    except Exception as error:  # albumentations raises many types for a bad dict
        raise ValueError(f"not a valid albumentations pipeline ({error})") from None


def _check_channels(transforms: Transforms, info: ValidationInfo) -> None:
    """Array images of other than 3 channels: no transform that needs RGB (``Known.check_channels``)."""
    channels = (info.context or {}).get("channels")
    check = _known(info).check_channels
    if channels not in (None, 3) and check is not None:
        check(transforms, channels)


def _check_device(transforms: Transforms | None, known: Known, where: str) -> None:
    if known.check_device_augment is not None and transforms:
        try:
            known.check_device_augment(transforms)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None


Regime = Literal["features", "finetune", "partial", "scratch"]


class MixUpConfig(_Frozen):
    """MixUp: a batch's images and targets blended with a shuffled copy of the batch."""

    alpha: float = Field(0.2, gt=0, description="each image's weight is drawn from Beta(alpha, alpha)")
    p: float = Field(0.5, gt=0, le=1, description="the share of training batches mixed")


class CutMixConfig(_Frozen):
    """CutMix: a box of another image of the batch pasted on each image; targets by area."""

    alpha: float = Field(1.0, gt=0, description="the kept share is drawn from Beta(alpha, alpha)")
    p: float = Field(0.5, gt=0, le=1, description="the share of training batches cut and mixed")


class EMAConfig(_Frozen):
    """An exponential moving average of the weights, validated, checkpointed and predicted with."""

    decay: float = Field(0.999, gt=0, lt=1, description="the average's momentum per training step")


# --- the training knobs winners turn (README "Recipes"): optimizer, schedule, loss, sampling,
# checkpoint averaging, pooling; each off (None) by default --------------------------------------


class OptimizerConfig(_Frozen):
    """A phase's optimizer (``training.optim.create_optimizer``). ``adamw`` and ``lion`` take
    ``beta_1``/``beta_2`` (Keras's defaults where unset); ``sgd`` takes ``momentum`` and
    ``nesterov``. The model's ``weight_decay`` applies to all three (decoupled)."""

    type: Literal["adamw", "sgd", "lion"] = "adamw"
    beta_1: float | None = Field(None, gt=0, lt=1, description="adamw, lion")
    beta_2: float | None = Field(None, gt=0, lt=1, description="adamw, lion")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd")
    nesterov: bool = Field(True, description="sgd")


class ScheduleConfig(_Frozen):
    """A phase's learning rate over its steps, rising linearly for ``warmup_epochs`` first.
    ``cosine``: down to 1% of the peak; ``constant``: the peak; ``step``: times ``gamma`` every
    ``step_epochs``; ``onecycle``: from peak/25 up over ``pct_start`` of the phase, then a
    cosine down to peak/25e4 (``warmup_epochs`` unused)."""

    type: Literal["cosine", "onecycle", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0, description="cosine, step, constant: linear warm-up")
    step_epochs: int = Field(1, ge=1, description="step: epochs between two drops")
    gamma: float = Field(0.1, gt=0, le=1, description="step: the drop's factor")
    pct_start: float = Field(0.3, gt=0, lt=1, description="onecycle: the share of the phase rising")


class PhaseRecipe(_Frozen):
    """What one phase (``head``, ``unfrozen``, ``all``) sets for itself over the model's keys."""

    optimizer: OptimizerConfig | None = None
    schedule: ScheduleConfig | None = None
    layer_decay: float | None = Field(None, gt=0, le=1)


class FocalLoss(_Frozen):
    """Focal loss (Keras's CategoricalFocalCrossentropy; multilabel: BinaryFocalCrossentropy)."""

    type: Literal["focal"]
    gamma: float = Field(2.0, ge=0)
    alpha: float = Field(0.25, gt=0, le=1)


class CrossEntropyLoss(_Frozen):
    """``ce``: categorical cross-entropy (multilabel: binary); ``bce``: binary cross-entropy of
    every class column, also for single-label tasks."""

    type: Literal["ce", "bce"]
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class Poly1Loss(_Frozen):
    """PolyLoss's Poly-1 (Leng et al. 2022): cross-entropy plus ``epsilon * (1 - p_t)``."""

    type: Literal["poly1"]
    epsilon: float = Field(1.0, ge=-1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


LossConfig = Annotated[Union[FocalLoss, CrossEntropyLoss, Poly1Loss], Field(discriminator="type")]


class NegativesPerPositive(_Frozen):
    negatives_per_positive: float = Field(gt=0, description="binary: negatives drawn per positive")


class SamplerConfig(_Frozen):
    """A new draw of the training rows every epoch (the validation fold untouched):
    ``classes`` draws every class equally often (with replacement; as many rows as the fold
    has); ``{negatives_per_positive: N}`` (binary) keeps every positive and draws N negatives
    per positive."""

    balance: Literal["classes"] | NegativesPerPositive


class AverageConfig(_Frozen):
    """The fold's ``best.weights.h5`` becomes an average of its epochs' weights from
    ``from_epoch`` on: ``swa`` all of them; ``top_k`` the ``k`` best scored; ``greedy_soup``
    from the best down, each kept only if the held-out fold's score improves (Wortsman et al.)."""

    method: Literal["swa", "top_k", "greedy_soup"]
    k: int = Field(3, ge=1, description="top_k: how many epochs")
    from_epoch: int = Field(0, ge=0, description="the first epoch (from 0) that may go in")


class ResizeStep(_Frozen):
    """Progressive resizing: the first ``epochs`` of the schedule at a smaller ``size``."""

    size: int = Field(ge=8, le=1024)
    epochs: int = Field(ge=1)


class _Teachers(_Frozen):
    """Models of the pipeline listed before this one (``from`` in the YAML), whose trained folds
    this model learns from: a second round of training."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    teachers: list[str] = Field(alias="from", min_length=1, description="earlier models of the pipeline")


class PseudoLabelsConfig(_Teachers):
    """Pseudo-labels: confident test images join each fold's training rows.

    Fold k's pseudo-labels are the mean of the ``from`` models' **fold-k** models' test
    predictions (models that never saw fold k's rows), so no fold's labels reach its own OOF
    through a pseudo-label; never the stack or other folds' models. A test image joins when its
    top probability reaches ``threshold`` (multilabel: every class's probability is at least
    ``threshold`` or at most ``1 - threshold``), labelled with its top class (``soft: false``) or
    the probabilities themselves (``soft: true``).
    """

    threshold: float = Field(0.9, ge=0, le=1, description="the confidence a test image needs to join")
    soft: bool = Field(False, description="train on the teachers' probabilities instead of their top class")


class DistillConfig(_Teachers):
    """OOF soft-label distillation: each training row's target is ``alpha`` times its one-hot
    label plus ``1 - alpha`` times the ``from`` models' probabilities.

    Fold k's soft labels come from the ``from`` models' fold-k models (trained on exactly the
    rows fold k trains on, never on fold k), so fold k's OOF stays honest; the models' plain OOF
    would not be (a row of fold j was predicted by fold j's model, which trained on fold k).
    """

    alpha: float = Field(0.5, ge=0, le=1, description="the weight of the one-hot label")


class CacheConfig(_Frozen):
    """How the resized image cache stores each image (``data/cache.py``): ``raw`` pixels (the
    default: fastest to read, largest), or each image encoded in one file (``jpeg``: at
    ``quality``, default 90; ``webp``: lossless unless a ``quality`` is given; ``png``: lossless)."""

    format: Literal["raw", "jpeg", "png", "webp"] = "raw"
    quality: int | None = Field(None, ge=1, le=100, description="jpeg, webp: 1-100 (webp without one: lossless)")

    @model_validator(mode="after")
    def _quality_of_a_lossy_format(self) -> "CacheConfig":
        if self.quality is not None and self.format not in ("jpeg", "webp"):
            raise ValueError(f"quality is for format jpeg or webp, not {self.format!r}")
        return self


def _raw_for_channels(cache: "CacheConfig | None", channels: int | None) -> None:
    """The encoded cache formats hold RGB images; other channel counts need ``raw``."""
    if cache is not None and cache.format != "raw" and channels not in (None, 3):
        raise ValueError(f"cache format {cache.format!r} encodes RGB images; {channels}-channel array "
                         "images need format raw")


class ModelConfig(_Frozen):
    """One base model: a backbone, its weights, and how it is fine-tuned.

    Regimes: ``features`` trains a head on frozen pooled features; ``finetune`` trains the head
    with the backbone frozen, then unfreezes (``unfreeze``) at ``finetune_lr``; ``partial`` cuts
    the backbone at ``cut_layer`` and trains dense layers on the frozen rest; ``scratch`` trains
    everything from the start. ``cut_layer`` cuts the backbone in the other regimes too.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    backbone: str
    weights: str = Field("imagenet", description="imagenet, none, or a path to a weights file")
    image_size: int | tuple[int, int] | None = Field(
        None, validate_default=True, description="n (square) or [height, width]; default: the backbone's own size")
    cache_size: int | tuple[int, int] | None = Field(
        None, description="cache at this larger size: random crops of image_size to train, the centre crop to "
                          "validate and predict")
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
    cut_layer: str | None = Field(None, description="the layer to cut the backbone at, in any regime "
                                  "(partial: its deepest cut point when unset)")
    dense_units: list[int] = Field([256], description="partial: the dense layers on the cut")
    patience: int = Field(3, ge=1, description="early stopping on the fold's metric")
    class_weights: bool = False
    pseudo_labels: PseudoLabelsConfig | None = Field(
        None, description="train also on confident test images labelled by earlier models' folds")
    distill: DistillConfig | None = Field(
        None, description="train on the one-hot labels mixed with earlier models' folds' probabilities")
    # --- recipes (README "Recipes"); each off by default and left out of the model's dump while
    # off, so the fingerprints of folds trained before these keys existed stay valid.
    mixup: MixUpConfig | None = Field(None, description="MixUp of training batches (images and targets)")
    cutmix: CutMixConfig | None = Field(None, description="CutMix of training batches (images and targets)")
    ema: EMAConfig | None = Field(None, description="EMA of the weights: validated, checkpointed, predicted")
    seeds: list[int] | None = Field(None, min_length=1, description="train every fold once per seed; average them")
    progressive: list[ResizeStep] | None = Field(
        None, min_length=1, description="the first epochs at smaller, growing sizes; the rest at image_size")
    augment_on: Literal["cpu", "device"] | None = Field(
        None, description="where this model's train transforms run, over the pipeline's augment.on")
    optimizer: OptimizerConfig | None = Field(None, description="default: adamw")
    schedule: ScheduleConfig | None = Field(None, description="default: cosine with one epoch of warm-up")
    layer_decay: float | None = Field(None, gt=0, le=1, description="learning rate times this per backbone "
                                                                    "block, from the head down")
    phases: dict[Literal["head", "unfrozen", "all"], PhaseRecipe] | None = Field(
        None, description="a phase's own optimizer, schedule or layer_decay")
    drop_path: float | None = Field(None, ge=0, lt=1, description="stochastic depth rate, where the backbone has it")
    loss: LossConfig | None = Field(None, description="default: cross-entropy (label_smoothing)")
    sampler: SamplerConfig | None = Field(None, description="a new balanced draw of training rows every epoch")
    average: AverageConfig | None = Field(None, description="best.weights.h5 an average of epochs' weights")
    pooling: Literal["avg", "gem", "max", "avgmax"] | None = Field(None, description="default: avg")
    head_dense: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="features, finetune, scratch: dense layers (each with dropout) before the classifier")
    meta: MetaConfig | None = Field(
        None, description="table columns through a dense branch joined to the pooled image features (README "
                          "\"Table columns\")")

    cache: CacheConfig | None = Field(
        None, description="the image cache's format, over the pipeline's cache (filled in from it unless raw)")
    # --- memory and batch (README "Large competitions"); off by default, left out of the dump while off.
    accumulate: int | None = Field(
        None, ge=1, description="gradient accumulation: one optimizer step per N batches, on their mean gradient")
    remat: bool | None = Field(None, description="recompute activations in the backward pass: less memory, more time")
    precision: Literal["mixed_float16", "mixed_bfloat16", "float32"] | None = Field(
        None, description="default: mixed_float16 on a GPU, float32 on the CPU")

    # --- array images (README "Array images"); left out of the dump while None.
    channels: int | None = Field(
        None, ge=1, validate_default=True, description="the input's channels: filled in from data.channels (array images); not set here")
    to_rgb: list[Annotated[int, Field(ge=0)] | Literal["mean"]] | None = Field(
        None, min_length=3, max_length=3, description="array images: the backbone's R, G, B, each a channel's "
                                                      "index or the mean of all; default: its first "
                                                      "convolution adapted to the channels")

    #: Keys left out of ``model_dump`` while None (see the comment above).
    OMITTED_WHEN_OFF: ClassVar[tuple[str, ...]] = ("mixup", "cutmix", "ema", "seeds", "progressive",
                                                   "pseudo_labels", "distill", "augment_on", "optimizer",
                                                   "schedule", "layer_decay", "phases", "drop_path", "loss",
                                                   "sampler", "average", "pooling", "head_dense", "meta", "cache",
                                                   "cache_size", "accumulate", "remat", "precision",
                                                   "channels", "to_rgb")

    @property
    def input_channels(self) -> int:
        """The channels of the images the network takes (3 for image files)."""
        return self.channels or 3

    @field_validator("channels", mode="before")
    @classmethod
    def _the_datas_channels(cls, value: int | None, info: ValidationInfo) -> int | None:
        channels = (info.context or {}).get("channels")
        if value is not None and value != channels:
            raise ValueError(f"filled in from data.channels ({channels}); leave it out")
        return channels

    @field_validator("cache")
    @classmethod
    def _raw_for_array_channels(cls, value: CacheConfig | None, info: ValidationInfo) -> CacheConfig | None:
        _raw_for_channels(value, (info.context or {}).get("channels"))
        return value

    @field_validator("to_rgb")
    @classmethod
    def _channels_the_images_have(cls, value: list | None, info: ValidationInfo) -> list | None:
        channels = (info.context or {}).get("channels")
        if value is None:
            return value
        if channels is None:
            raise ValueError("is for array images (data.image_source arrays or column)")
        wrong = [c for c in value if c != "mean" and c >= channels]
        if wrong:
            raise ValueError(f"names channel {wrong[0]}, but the images have {channels} (0 to {channels - 1})")
        return value

    @model_serializer(mode="wrap")
    def _omit_off(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        dumped = handler(self)
        return {key: value for key, value in dumped.items()
                if not (key in self.OMITTED_WHEN_OFF and value is None)}

    @property
    def teachers(self) -> list[str]:
        """The earlier models this one learns from (pseudo-labels, distillation), each once."""
        names = [*(self.pseudo_labels.teachers if self.pseudo_labels else []),
                 *(self.distill.teachers if self.distill else [])]
        return list(dict.fromkeys(names))

    @field_validator("augment_on")
    @classmethod
    def _device_forms(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value == "device":
            _check_device((info.context or {}).get("augment_train"), _known(info), "augment.train")
        return value

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str, info: ValidationInfo) -> str:
        # `in` resolves a family's prefixed name (hub:<preset>), raising one line on a bad one.
        if value in _known(info).backbones:
            return value
        return _one_of(value, list(_known(info).backbones), "backbone")

    @field_validator("drop_path")
    @classmethod
    def _backbone_drops_paths(cls, value: float | None, info: ValidationInfo) -> float | None:
        backbone = info.data.get("backbone")
        if value is not None and backbone is not None and not _known(info).backbones[backbone].drop_path:
            with_it = [name for name, sizes in _known(info).backbones.items() if sizes.drop_path]
            raise ValueError(f"backbone {backbone!r} has no stochastic depth; backbones with it: "
                             f"{', '.join(with_it) or 'none'}")
        return value

    @field_validator("loss")
    @classmethod
    def _smoothing_in_one_place(cls, value: Any, info: ValidationInfo) -> Any:
        """The model's ``label_smoothing`` goes with the default loss: beside a ``loss`` it would be
        ignored silently (a loss that smooths carries its own)."""
        smoothing = info.data.get("label_smoothing")
        if value is None or not smoothing:
            return value
        if "label_smoothing" in type(value).model_fields:
            raise ValueError(f"loss {value.type!r} takes its own label_smoothing: move label_smoothing "
                             f"({smoothing}) under loss")
        raise ValueError(f"loss {value.type!r} has no label smoothing: drop label_smoothing ({smoothing}) "
                         "or use loss ce, bce or poly1")

    @field_validator("pooling")
    @classmethod
    def _pooled_in_the_network(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The ``features`` regime caches average-pooled features; another pooling (GeM's p is
        learnt) belongs to an image regime's network."""
        if value not in (None, "avg") and info.data.get("regime") == "features":
            raise ValueError(f"pooling {value!r} needs an image regime (finetune, partial, scratch), not 'features'")
        return value

    @property
    def head_units(self) -> list[int]:
        """The head's hidden dense layers (each with its dropout): ``partial``'s ``dense_units``,
        the other regimes' ``head_dense`` (none by default)."""
        return self.dense_units if self.regime == "partial" else list(self.head_dense or [])

    @field_validator("head_dense")
    @classmethod
    def _partial_has_dense_units(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if value is not None and info.data.get("regime") == "partial":
            raise ValueError("regime 'partial' sets its dense layers with dense_units")
        return value

    @field_validator("image_size")
    @classmethod
    def _fits_backbone(cls, value: int | tuple[int, int] | None, info: ValidationInfo) -> int | tuple[int, int] | None:
        """The backbone's default size where none is given; too small for it is an error now
        rather than minutes into training. ``[n, n]`` is ``n``."""
        value = _size(value)
        # `backbone` is validated first (field order), and is absent from info.data when unknown.
        backbone = info.data.get("backbone")
        if backbone is None:
            return value
        sizes = _known(info).backbones[backbone]
        if value is None:
            return sizes.default
        if min(hw(value)) < sizes.minimum:
            raise ValueError(f"backbone {backbone!r} needs at least {sizes.minimum}")
        return value

    @field_validator("cache_size")
    @classmethod
    def _holds_the_crops(cls, value: int | tuple[int, int] | None, info: ValidationInfo) -> int | tuple[int, int] | None:
        """At least ``image_size`` each way (the crops are cut from it); equal is no crop."""
        value, size = _size(value), info.data.get("image_size")
        if value is None or size is None:
            return value
        if any(c < i for c, i in zip(hw(value), hw(size))):
            raise ValueError(f"{value} is smaller than image_size {size}: the training crops of image_size "
                             "are cut from the cache")
        return None if hw(value) == hw(size) else value

    @property
    def cached_size(self) -> int | tuple[int, int]:
        """The size the images are cached at: ``cache_size``, else ``image_size``."""
        return self.cache_size or self.image_size

    @field_validator("accumulate")
    @classmethod
    def _one_is_none(cls, value: int | None) -> int | None:
        """``accumulate: 1`` is no accumulation: the same dump (and folds) as none."""
        return None if value == 1 else value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) < len(value):
            raise ValueError("seeds must be distinct")
        return value

    @field_validator("mixup", "cutmix", "progressive")
    @classmethod
    def _image_regime(cls, value: Any, info: ValidationInfo) -> Any:
        """MixUp, CutMix and progressive resizing change images; ``features`` trains on cached
        backbone features of fixed images."""
        if value is not None and info.data.get("regime") == "features":
            raise ValueError("needs an image regime (finetune, partial, scratch), not 'features'")
        return value

    @field_validator("meta")
    @classmethod
    def _meta_in_an_image_network(cls, value: MetaConfig | None, info: ValidationInfo) -> MetaConfig | None:
        """The branch joins the pooled features inside an image regime's network, and reads the
        train table's own rows (``mixup``, ``cutmix`` and ``pseudo_labels`` are declared first)."""
        if value is None:
            return value
        if info.data.get("regime") == "features":
            raise ValueError("needs an image regime (finetune, partial, scratch), not 'features'")
        why = {"mixup": "a mixed image holds two rows' columns", "cutmix": "a mixed image holds two rows' columns",
               "pseudo_labels": "a pseudo-labelled test image is not a row of the train table"}
        for key, reason in why.items():
            if info.data.get(key) is not None:
                raise ValueError(f"not with {key}: {reason}")
        return value

    @field_validator("cutmix")
    @classmethod
    def _one_mix_per_batch(cls, value: CutMixConfig | None, info: ValidationInfo) -> CutMixConfig | None:
        mixup = info.data.get("mixup")
        if value is not None and mixup is not None and mixup.p + value.p > 1:
            raise ValueError(f"cutmix.p + mixup.p = {mixup.p + value.p:g}: a batch gets at most one of them, "
                             "so they add up to 1 at most")
        return value

    @field_validator("progressive")
    @classmethod
    def _grows_to_image_size(cls, value: list[ResizeStep] | None, info: ValidationInfo) -> list[ResizeStep] | None:
        """Sizes grow, stay below ``image_size`` and above the backbone's minimum, and leave at
        least one epoch at ``image_size`` (validation and prediction are at that size)."""
        size, epochs, backbone = (info.data.get(key) for key in ("image_size", "epochs", "backbone"))
        if value is None or size is None or epochs is None or backbone is None:
            return value
        if not isinstance(size, int) or info.data.get("cache_size") is not None:
            raise ValueError("progressive resizing needs a square image_size and no cache_size")
        sizes = [step.size for step in value]
        if sizes != sorted(set(sizes)) or sizes[-1] >= size:
            raise ValueError(f"sizes {sizes} must grow and stay below image_size {size}")
        minimum = _known(info).backbones[backbone].minimum
        if sizes[0] < minimum:
            raise ValueError(f"size {sizes[0]}: backbone {backbone!r} needs at least {minimum}")
        steps = sum(step.epochs for step in value)
        if steps >= epochs:
            raise ValueError(f"epochs add up to {steps}, but the model's epochs is {epochs}: "
                             "keep at least one epoch at image_size")
        return value


#: A candidate's name with the table columns of ``stack.features`` (``lightgbm+features``).
WITH_FEATURES = "+features"

#: The per-group features ``stack.features.group_features`` may list (see ``level2.columns``).
GroupFeature = Literal["rank", "zscore", "mean", "count"]


class TableColumns(_Frozen):
    """Columns of the train and test tables read beside the pixels, joined by id: ``columns``
    and ``categorical`` (a column in ``categorical`` is a category, listed there or in both; the
    others are numbers, an empty cell missing)."""

    columns: list[str] = []
    categorical: list[str] = []

    @property
    def numeric(self) -> list[str]:
        """The numeric columns: those of ``columns`` not in ``categorical``."""
        return [column for column in self.columns if column not in self.categorical]

    @property
    def used(self) -> list[str]:
        """Every column encoded: the numeric ones, then the categorical ones."""
        return [*self.numeric, *self.categorical]

    @property
    def read(self) -> list[str]:
        """Every column read from a table."""
        return self.used


class StackFeatures(TableColumns):
    """Table columns beside the base models' scores, for the candidates that take features.

    ``columns`` are read from the train table (``data.train_csv``) and the test table
    (``data.test_csv``, else the sample submission) and joined by id; those also named in
    ``categorical`` are categories (encoded inside each CV fold), the others numbers (an empty
    cell is missing). ``group`` names a column whose rows form a group (a patient): each of
    ``group_features`` is computed per group over every model's scores and the numeric columns
    (for the test set, over the test rows of the group).
    """

    group: str | None = None
    group_features: list[GroupFeature] = []

    @model_validator(mode="after")
    def _something_to_add(self) -> StackFeatures:
        if self.group_features and self.group is None:
            raise ValueError("group_features need a group column ('group')")
        if not self.columns and not self.categorical and not self.group_features:
            raise ValueError("list columns, categorical columns or group_features")
        if len(set(self.used)) != len(self.used):
            raise ValueError("columns must be distinct")
        return self

    @property
    def read(self) -> list[str]:
        """Every column read from a table: the encoded ones and the group's."""
        return list(dict.fromkeys([*self.used, *([self.group] if self.group else [])]))


class MetaConfig(TableColumns):
    """A model's table columns beside the pixels (``meta``): read like ``stack.features``'s, from
    the train and the test table by id, into a small dense branch joined to the pooled image
    features before the head. Numbers are standardised by the fold's training rows (a missing
    one is 0 with an indicator); categories one-hot over the training rows' values, an unseen
    one encoded as unknown."""

    @model_validator(mode="after")
    def _something_to_read(self) -> MetaConfig:
        if not self.used:
            raise ValueError("list columns or categorical columns")
        if len(set(self.used)) != len(self.used):
            raise ValueError("columns must be distinct")
        return self


class StackConfig(_Frozen):
    """Level two: candidates scored by CV on the base models' folds; the best goes on.

    ``lightgbm`` holds LightGBM parameters over the stacker's defaults (e.g. ``num_leaves``,
    ``num_iterations``, ``early_stopping_round``, ``num_threads``).

    ``lightgbm_max_negatives`` bounds LightGBM's shared layout (over 10 classes: one row per
    sample and class, nearly all negatives); see ``LightGBMStacker``. Its default keeps the fit
    as good as with every row and much cheaper (measured in benchmarks/RESULTS.md).

    ``thresholds`` (multilabel): the probability at which a class is predicted, for the
    ``multilabel`` submission and the metrics on hard predictions. ``fixed``: 0.5; ``global``:
    one threshold for every class, fitted on the stacked OOF; ``per_class``: one per class;
    ``auto``: both fitted, the one with the better nested CV kept (see
    :mod:`foldstack.level2.thresholds`).

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
    thresholds: Literal["fixed", "global", "per_class", "auto"] = Field(
        "fixed", description="multilabel: 0.5 for every class (fixed), or thresholds fitted on the stacked OOF")
    caruana_iterations: int = Field(25, ge=1, le=1000, description="caruana: models added in all, with replacement")
    caruana_init: int = Field(1, ge=1, description="caruana: start from this many best single models")
    features: StackFeatures | None = Field(
        None, description="table columns for the candidates that take features, each also scored without them")

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
            _one_of(value.removesuffix(WITH_FEATURES), list(_known(info).candidates), "candidate", quote=True)
        return value

    @model_validator(mode="after")
    def _force_among_candidates(self) -> StackConfig:
        if self.force and self.force.endswith(WITH_FEATURES) and self.features is None:
            raise ValueError(f"force {self.force!r} needs stack.features")
        if self.force and self.candidates and self.force.removesuffix(WITH_FEATURES) not in self.candidates:
            raise ValueError(f"force {self.force!r} is not among candidates: {', '.join(self.candidates)}")
        if self.caruana_init > self.caruana_iterations:
            raise ValueError(f"caruana_init ({self.caruana_init}) exceeds caruana_iterations ({self.caruana_iterations})")
        return self


class SubmissionConfig(_Frozen):
    """How the submission file is laid out; it must match the sample submission.

    ``label``: one column of class names; ``probabilities``: one column per class;
    ``binary``: one column with the positive class's probability; ``multilabel``: one column of
    space-separated class names (those at or above their class's threshold: 0.5, or as
    ``stack.thresholds`` fitted them); ``value``: one numeric column (``task: regression``).
    """

    format: Literal["label", "probabilities", "binary", "multilabel", "value"] = "label"


class RegressionConfig(_Frozen):
    """How a regression's networks learn and what they may submit (``task: regression``).

    Every network regresses the target standardised by the mean and standard deviation of its
    fold's training rows (so a target in the thousands trains like one near 0), and predicts it
    on its own scale. ``loss``: ``mse`` or ``huber`` (``huber_delta`` in standard deviations of
    the target). ``range``: the target's ``[low, high]``; the submission's values are clipped to
    it (a popularity score of 1..100, an age above 0).
    """

    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0, description="huber: where the loss turns linear, in standard deviations")
    range: tuple[float, float] | None = Field(None, description="the target's [low, high]; submissions are clipped to it")

    @field_validator("range")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"must be [low, high] with low < high, not {list(value)}")
        return value


#: The tasks whose prediction files hold one number per row, not one probability per class.
ONE_COLUMN_TASKS = ("ordinal", "regression")


class ComputeConfig(_Frozen):
    """Where the folds run (see README, "Many GPUs, many machines").

    ``executor: local`` runs every (model, fold) in a process of its own on this machine,
    ``devices`` of them at once, each on its own GPU (``CUDA_VISIBLE_DEVICES``) or, without GPUs,
    on its own CPU slot. ``executor: ray`` sends each (model, fold) to a Ray cluster as a task
    (one GPU each where the cluster has GPUs); the cluster's address comes from ``ray_address``
    or the ``FOLDSTACK_RAY_ADDRESS`` environment variable (which wins), else Ray starts one on
    this machine. ``data_parallel`` trains one fold on every device at once through Keras's
    distribution API instead of one fold per device.
    """

    executor: Literal["local", "ray"] = Field("local", description="local: this machine; ray: a Ray cluster")
    devices: Literal["auto"] | int = Field(
        "auto", description="folds at once (local): auto = one per GPU, or one at a time without a GPU; "
                            "N = N folds at once, each on its own GPU, or on its own CPU core without a GPU")
    gpu: Literal["auto"] | bool = Field(
        "auto", description="auto: GPUs where there are some; true: stop with an error where there is none; "
                            "false: CPU only")
    data_parallel: bool = Field(False, description="one fold at a time, split over the devices "
                                                   "(keras.distribution / tf.distribute)")
    ray_address: str | None = Field(None, description="a Ray cluster's address (ray://host:10001 or host:6379)")
    max_retries: int = Field(1, ge=0, le=10, description="how often a fold whose process died is tried again")

    @field_validator("devices")
    @classmethod
    def _positive(cls, value: Literal["auto"] | int) -> Literal["auto"] | int:
        if value != "auto" and value < 1:
            raise ValueError("must be 'auto' or at least 1")
        return value

    @model_validator(mode="after")
    def _ray_takes_the_cluster(self) -> ComputeConfig:
        if self.executor == "ray" and self.devices != "auto":
            raise ValueError("devices: the Ray executor takes its devices from the cluster; leave devices: auto")
        if self.executor == "ray" and self.data_parallel:
            raise ValueError("data_parallel: one Ray task holds one GPU; use executor: local for data parallel")
        return self


class MetricCallable(_Frozen):
    """A pipeline's own metric: ``function(y_true, predictions) -> float`` where ``y_true`` holds
    class indices (multilabel: a 0/1 matrix) and ``predictions`` the hard labels (``needs:
    labels``) or the probabilities (``probabilities``: ``(n, C)``, a binary task's positive
    column ``(n,)``)."""

    callable: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="package.module:function")
    greater_is_better: bool = True
    needs: Literal["labels", "probabilities"] = "probabilities"


class PipelineConfig(_Frozen):
    """A whole pipeline.

    ``task: ordinal`` takes numeric grades (``0``..``4``): every network regresses one score (on
    the scale of the grade's position, 0 for the lowest), level two blends scores, cut points
    fitted on OOF turn scores into grades, and the submission holds grades (``format: label``).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Literal["binary", "multiclass", "multilabel", "ordinal", "regression"] = "multiclass"
    metric: str
    seed: int = 42
    data: DataConfig
    folds: FoldsConfig = FoldsConfig()
    augment: AugmentConfig = AugmentConfig()
    models: list[ModelConfig] = Field(min_length=1)
    stack: StackConfig = StackConfig()
    submission: SubmissionConfig = SubmissionConfig()
    positive_class: str | None = Field(
        None, description="binary task: the class whose probability is scored and submitted (class index 1)")
    compute: ComputeConfig = ComputeConfig()
    regression: RegressionConfig | None = Field(None, description="task regression: its loss and target range")
    cache: CacheConfig = Field(CacheConfig(), description="the image cache's format for every model (README \"Large competitions\")")

    @field_validator("metric", mode="before")
    @classmethod
    def _callable_metric(cls, value: Any, info: ValidationInfo) -> Any:
        """``metric: {callable: "package.module:function", greater_is_better, needs}`` becomes its
        name (``Known.callable_metric``), which every process resolves alone."""
        if not isinstance(value, dict):
            return value
        spec = MetricCallable.model_validate(value)
        known = _known(info)
        if known.callable_metric is None:
            raise ValueError("a metric callable needs foldstack.pipeline's registries")
        name = known.callable_metric(spec.callable, spec.greater_is_better, spec.needs)
        info.context["callable_metric"] = name  # for _known_metric: imported and checked here
        return name

    @model_serializer(mode="wrap")
    def _omit_raw_cache(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """``cache`` is left out while raw, so the manifests written before it existed still match."""
        dumped = handler(self)
        if self.cache == CacheConfig():
            dumped.pop("cache", None)
        return dumped

    @field_validator("cache")
    @classmethod
    def _cache_of_the_channels(cls, value: CacheConfig, info: ValidationInfo) -> CacheConfig:
        _raw_for_channels(value, (info.context or {}).get("channels"))
        return value

    @model_validator(mode="after")
    def _models_take_the_cache(self) -> "PipelineConfig":
        """A model without a ``cache`` of its own takes the pipeline's, unless that is raw (so a raw
        model's dump, and its folds' fingerprints, stay as they were): the format is part of a
        fold's recipe, since JPEG changes the pixels it trains on."""
        if self.cache != CacheConfig():
            for i, model in enumerate(self.models):
                if model.cache is None:
                    self.models[i] = model.model_copy(update={"cache": self.cache})
        return self

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str, info: ValidationInfo) -> str:
        if value == (info.context or {}).get("callable_metric"):
            return value
        _one_of(value, list(_known(info).metrics), "metric")
        # An ordinal score is scored as the grades it is cut into (`task` is validated first).
        grade_metrics = list(_known(info).grade_metrics)
        if info.data.get("task") == "ordinal" and value not in grade_metrics:
            raise ValueError(f"task 'ordinal' needs a metric of grades: {', '.join(grade_metrics)}")
        value_metrics = list(_known(info).value_metrics)
        if (info.data.get("task") == "regression") != (value in value_metrics):
            others = [name for name in _known(info).metrics if name not in value_metrics]
            allowed = value_metrics if info.data.get("task") == "regression" else others
            raise ValueError(f"task {info.data.get('task')!r} needs one of: {', '.join(allowed)}")
        return value

    @field_validator("models")
    @classmethod
    def _recipes_of_a_score(cls, value: list[ModelConfig], info: ValidationInfo) -> list[ModelConfig]:
        """An ordinal or regression task's networks regress a number: the recipes made for class
        probabilities (label smoothing, class weights, pseudo-labels and distillation from a
        teacher's probabilities) do not apply."""
        task = info.data.get("task")
        for i, model in (enumerate(value) if task in ONE_COLUMN_TASKS else ()):
            for key in ("label_smoothing", "pseudo_labels", "distill", "loss", *(("class_weights",) if task == "regression" else ())):
                if getattr(model, key):
                    raise ValueError(f"models[{i}].{key}: not for task {task!r}, whose networks regress a "
                                     f"number (model {model.name!r})")
        return value

    @field_validator("models")
    @classmethod
    def _recipes_of_the_scored_classes(cls, value: list[ModelConfig], info: ValidationInfo) -> list[ModelConfig]:
        """Networks of finer classes (``data.train_label``) cannot take what is given per scored
        class: a teacher's scored probabilities (pseudo-labels, distillation) or ``class_weights``."""
        data = info.data.get("data")
        for i, model in (enumerate(value) if data is not None and data.train_label else ()):
            for key in ("pseudo_labels", "distill", "class_weights"):
                if getattr(model, key):
                    raise ValueError(f"models[{i}].{key}: not with data.train_label, whose networks train on "
                                     f"its finer classes, not the scored ones (model {model.name!r})")
        return value

    @field_validator("submission")
    @classmethod
    def _ordinal_submits_grades(cls, value: SubmissionConfig, info: ValidationInfo) -> SubmissionConfig:
        if info.data.get("task") == "ordinal" and value.format != "label":
            raise ValueError("task 'ordinal' submits grades: the format must be 'label'")
        if (info.data.get("task") == "regression") != (value.format == "value"):
            raise ValueError("task 'regression' submits numbers: format 'value' is for it alone, and it "
                             f"needs it (task {info.data.get('task')!r}, format {value.format!r})")
        return value

    @field_validator("regression")
    @classmethod
    def _regression_for_regression(cls, value: RegressionConfig | None, info: ValidationInfo) -> RegressionConfig | None:
        task = info.data.get("task")
        if value is not None and task is not None and task != "regression":
            raise ValueError(f"regression is for task 'regression', not {task!r}")
        return value

    @field_validator("models")
    @classmethod
    def _crops_from_a_cache_size(cls, value: list[ModelConfig], info: ValidationInfo) -> list[ModelConfig]:
        """A train crop that is not resized back needs a ``cache_size`` to crop from: the cache is
        at ``image_size``, and a smaller crop of it is not the network's input."""
        augment = info.data.get("augment")
        last = None
        for j, transform in enumerate(augment.train if augment else []):
            name = str(transform.get("__class_fullname__", "")).rsplit(".", 1)[-1]
            if name in ("RandomCrop", "CenterCrop", "Crop", "Resize", "RandomResizedCrop", "RandomSizedCrop"):
                last = (j, name)
        if last is None or last[1] not in ("RandomCrop", "CenterCrop", "Crop"):
            return value
        for i, model in enumerate(value):
            if model.cache_size is None:
                raise ValueError(f"models[{i}]: augment.train[{last[0]}] {last[1]} without a cache_size: set "
                                 f"models[{i}].cache_size larger than image_size, and crops of image_size are cut "
                                 "from it (random to train, the centre to predict)")
        return value

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: list[ModelConfig]) -> list[ModelConfig]:
        names = [model.name for model in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"model names must be unique; repeated: {', '.join(repeated)}")
        return value

    @field_validator("models")
    @classmethod
    def _teachers_listed_before(cls, value: list[ModelConfig]) -> list[ModelConfig]:
        """A model learns only from models listed before it: the train stage trains them first."""
        for i, model in enumerate(value):
            earlier = [m.name for m in value[:i]]
            for key in ("pseudo_labels", "distill"):
                setting = getattr(model, key)
                for name in setting.teachers if setting else []:
                    if name not in earlier:
                        raise ValueError(f"models[{i}].{key}.from: {name!r} is not a model listed before "
                                         f"{model.name!r} (listed before it: {', '.join(earlier) or 'none'})")
                    # A teacher's fold k is one model; a seed-bagged one has several (not supported yet).
                    if value[earlier.index(name)].seeds:
                        raise ValueError(f"models[{i}].{key}.from: {name!r} has seeds; a teacher must be one "
                                         "run per fold (seed-bagged teachers are not supported)")
        return value

    @field_validator("models")
    @classmethod
    def _meta_from_the_train_table(cls, value: list[ModelConfig], info: ValidationInfo) -> list[ModelConfig]:
        """A model's ``meta`` columns are the train table's: an external dataset's rows have none."""
        data = info.data.get("data")
        for i, model in enumerate(value):
            if model.meta is not None and data is not None and data.extra:
                raise ValueError(f"models[{i}].meta: not with data.extra (an external dataset's rows have no "
                                 f"columns of the train table; model {model.name!r})")
        return value

    @field_validator("models")
    @classmethod
    def _samplers_of_a_task(cls, value: list[ModelConfig], info: ValidationInfo) -> list[ModelConfig]:
        """A sampler draws rows by their class: a multilabel row has several, so it cannot
        balance them; negatives per positive need a binary task's positive class."""
        task = info.data.get("task")
        for i, model in enumerate(value):
            if model.sampler is None:
                continue
            if task == "multilabel":
                raise ValueError(f"models[{i}].sampler: cannot balance a multilabel task's rows, which hold "
                                 f"several classes each (model {model.name!r})")
            if model.sampler.balance != "classes" and task != "binary":
                raise ValueError(f"models[{i}].sampler.balance.negatives_per_positive: needs task 'binary', "
                                 f"not {task!r} (model {model.name!r}); use balance: classes")
        return value

    @field_validator("stack")
    @classmethod
    def _thresholds_for_multilabel(cls, value: StackConfig, info: ValidationInfo) -> StackConfig:
        task = info.data.get("task")
        if value.thresholds != "fixed" and task is not None and task != "multilabel":
            raise ValueError(f"thresholds {value.thresholds!r} needs task 'multilabel' (task is {task!r})")
        return value

    @field_validator("positive_class")
    @classmethod
    def _positive_class_for_binary(cls, value: str | None, info: ValidationInfo) -> str | None:
        task = info.data.get("task")
        if value is not None and task != "binary":
            raise ValueError(f"positive_class is for task 'binary', not {task!r}")
        return value

    @property
    def target(self) -> RegressionConfig:
        """The regression settings (defaults where the YAML has none)."""
        return self.regression or RegressionConfig()

    def model(self, name: str) -> ModelConfig:
        """The model called ``name``; a ConfigError lists the ones that exist."""
        for model in self.models:
            if model.name == name:
                return model
        raise ConfigError(f"pipeline {self.name!r} has no model {name!r}; it has: "
                          f"{', '.join(m.name for m in self.models)}")


def hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of an image size: ``n`` (square) or ``[height, width]``."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _size(value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
    """An image size checked (8 to 1024 px each way), ``[n, n]`` as ``n``."""
    if value is None:
        return None
    h, w = hw(value)
    if not (8 <= h <= 1024 and 8 <= w <= 1024):
        raise ValueError("each side must be 8 to 1024 px")
    return h if h == w else (h, w)


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

