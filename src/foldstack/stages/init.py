"""`foldstack init`: a pipeline YAML written from a competition's own files.

Fetches the files as ``download`` does (a local folder copied, or a Kaggle competition through
the client; archives unpacked), reads the keys off them (``data/infer.py``), and writes
``pipelines/<name>.yaml`` atomically with a comment on every inferred key saying what it was
inferred from; a key the files cannot settle carries ``# check:``. The metric comes from the
competition's evaluation where the Kaggle client can read it, else it is the task's usual one,
marked as guessed. Default models and augmentation are sized for this machine (a GPU or not).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from foldstack.core.config import DataConfig
from foldstack.core.errors import FoldstackError
from foldstack.core.files import write_text
from foldstack.core.paths import Paths
from foldstack.data import archives, infer, kaggle, sources

log = logging.getLogger(__name__)

#: The usual metric of a task and submission format, when the competition's evaluation is unknown.
USUAL_METRIC = {("binary", "binary"): "roc_auc", ("binary", "label"): "accuracy",
                ("binary", "probabilities"): "log_loss", ("multiclass", "probabilities"): "log_loss",
                ("multiclass", "label"): "accuracy", ("multilabel", "multilabel"): "f1_micro",
                ("multilabel", "probabilities"): "mean_column_auc", ("ordinal", "label"): "quadratic_kappa"}
#: Kaggle's evaluation names (lower case, searched) and foldstack's metric for each.
KAGGLE_METRICS = ((r"kappa", "quadratic_kappa"), (r"log ?loss|logarithmic", "log_loss"),
                  (r"\bauc\b|roc", "roc_auc"), (r"accuracy", "accuracy"), (r"f2", "f2_micro"),
                  (r"macro", "f1_macro"), (r"f1|f-?score|fscore", "f1_micro"), (r"map@?5|average precision", "map_at_5"))

AUGMENT = {
    "train": [{"__class_fullname__": "HorizontalFlip", "p": 0.5},
              {"__class_fullname__": "Affine", "rotate": [-10, 10], "scale": [0.9, 1.1],
               "translate_percent": [-0.05, 0.05], "p": 0.7},
              {"__class_fullname__": "RandomBrightnessContrast", "brightness_limit": 0.15, "contrast_limit": 0.15,
               "p": 0.5}],
    "valid": [],
    "tta": [[], [{"__class_fullname__": "HorizontalFlip", "p": 1.0}]],
}
GPU_MODELS = [
    {"name": "effnet_b3", "backbone": "efficientnet_b3", "weights": "imagenet", "image_size": 300,
     "regime": "finetune", "head_epochs": 1, "epochs": 10, "batch_size": 24, "lr": 0.001, "finetune_lr": 0.0001,
     "dropout": 0.3, "patience": 3},
    {"name": "convnext_tiny", "backbone": "convnext_tiny", "weights": "imagenet", "image_size": 224,
     "regime": "finetune", "head_epochs": 1, "epochs": 10, "batch_size": 32, "lr": 0.001, "finetune_lr": 0.00005,
     "weight_decay": 0.05, "dropout": 0.2, "patience": 3},
]
CPU_MODELS = [
    {"name": "lite0_features", "backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 224,
     "regime": "features", "epochs": 30, "batch_size": 64, "lr": 0.001, "dropout": 0.3, "patience": 5},
    {"name": "cnn64", "backbone": "small_cnn", "weights": "none", "image_size": 64, "regime": "scratch",
     "epochs": 20, "batch_size": 64, "lr": 0.003, "patience": 5},
]


@dataclass
class Initialised:
    """What ``init`` wrote: the YAML, the keys to check and the lines the files could not settle."""

    path: Path
    task: str
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Fetching:
    """What the download functions read of a pipeline (its name and data keys), before one exists."""

    name: str
    data: DataConfig


def run(name: str, paths: Paths, target: Path, source: dict[str, Any], force: bool = False,
        gpus: int | None = None) -> Initialised:
    """Fetch the competition named by ``source`` into ``paths.data``, infer its pipeline and write
    it to ``target``.

    Args:
        name: the pipeline's name.
        paths: the pipeline's folders (its data lands in ``paths.data``).
        target: the YAML to write (``pipelines/<name>.yaml``).
        source: ``{"type": "local", "path": ...}`` or ``{"type": "kaggle_competition", ...}``.
        force: overwrite ``target`` if it exists.
        gpus: GPUs to size the models for; default: the ones this machine has.

    Raises:
        FoldstackError: ``target`` exists (without ``force``); the files cannot give a pipeline.
    """
    if target.exists() and not force:
        raise FoldstackError(f"{target}: already there; pass --force (make init FORCE=1) to write it again")
    fetching = _Fetching(name, DataConfig(source=source))
    if source["type"] == "kaggle_competition":
        data = kaggle.download(fetching, paths)
    else:
        data = sources.fetch(fetching, paths)
    found = infer.infer(data)
    metric = _metric(found, source)
    unpacked = _archives(Path(source["path"]) if source["type"] == "local" else None)
    gpus = _gpus() if gpus is None else gpus
    text = render(name, source, found, metric, unpacked, gpus)
    write_text(target, text)
    checks = [f"{line.split(':')[0].strip()}: {line.split('# check:', 1)[1].strip()}"
              for line in _key_lines(text) if "# check:" in line]
    return Initialised(target, found.get("task"), checks, found.notes)


def _metric(found: infer.Inference, source: dict[str, Any]) -> infer.Key:
    task, fmt = found.get("task"), found.get("submission.format")
    if source["type"] == "kaggle_competition":
        evaluation = kaggle.evaluation_metric(source["competition"])
        metric = _from_kaggle(evaluation, fmt) if evaluation else None
        if metric:
            return infer.Key("metric", metric, f"the competition's evaluation: {evaluation}")
    usual = USUAL_METRIC.get((task, fmt))
    if usual is None:
        return infer.Key("metric", "accuracy", f"guessed: no usual metric for task {task!r}", check=True)
    return infer.Key("metric", usual, f"guessed: the usual metric of task {task} with a {fmt} submission; "
                     "see the competition's Evaluation page", check=True)


def _from_kaggle(evaluation: str, fmt: str | None) -> str | None:
    text = evaluation.lower()
    metric = next((ours for pattern, ours in KAGGLE_METRICS if re.search(pattern, text)), None)
    if metric == "roc_auc" and fmt == "probabilities":
        return "mean_column_auc"
    return metric


def _archives(folder: Path | None) -> list[str]:
    """The archives a local competition ships (unpacked by ``download``), for the comment."""
    return [p.relative_to(folder).as_posix() for p in archives.find(folder)] if folder else []


def _gpus() -> int:
    """NVIDIA GPUs the driver lists, without importing a deep-learning framework."""
    listed = Path("/proc/driver/nvidia/gpus")
    return len(list(listed.iterdir())) if listed.is_dir() else 0


# --- the YAML --------------------------------------------------------------------------------------


def render(name: str, source: dict[str, Any], found: infer.Inference, metric: infer.Key, unpacked: list[str],
           gpus: int) -> str:
    """The pipeline's YAML text, every inferred key with its comment."""
    where = source.get("path") or source.get("competition")
    lines = [f"# Written by `foldstack init` from {where}: every key says what it was inferred from;",
             "# `# check:` marks what the files cannot settle. Check those, then `make check`.",
             f"name: {name}",
             _line("task", found.get("task"), _key(found, "task")),
             _line("metric", metric.value, metric),
             *([_line("positive_class", found.get("positive_class"), _key(found, "positive_class"))]
               if found.get("positive_class") is not None else []),
             "seed: 42", "", "data:"]
    kind = "a Kaggle competition, downloaded by the client" if source["type"] == "kaggle_competition" \
        else "the folder given to init"
    lines.append(_line("source", source, infer.Key("data.source", source, kind), indent=2))
    lines.append(_line("unpack", True, infer.Key("data.unpack", True, "archives unpacked by download: "
                                                 + (", ".join(unpacked) if unpacked else "none shipped")), indent=2))
    for key in found.keys:
        if key.path.startswith("data.") and key.path != "data.source":
            lines.append(_line(key.path.split(".", 1)[1], key.value, key, indent=2))
    lines += ["", "folds:"]
    lines += [_line(key.path.split(".", 1)[1], key.value, key, indent=2) for key in found.keys
              if key.path.startswith("folds.")]
    lines += ["", "# A generic default: flips, small turns and light changes; fit it to the images "
              "(no flips for text or digits).", "augment:"]
    lines += [f"  {key}: {_flow(value)}" for key, value in AUGMENT.items()]
    models, machine = (GPU_MODELS, f"{gpus} GPU(s)") if gpus else (CPU_MODELS, "no GPU")
    lines += ["", f"# Sized for this machine ({machine}): "
              + ("two ImageNet networks fine-tuned at 300 and 224 px." if gpus else
                 "frozen EfficientNet-Lite0 features and a small CNN from scratch; on a GPU, larger networks "
                 "fine-tuned (README, 'Backbones and transfer regimes')."), "models:"]
    lines += [f"  - {_flow(model)}" for model in models]
    lines += ["", "stack: {}", "submission:", _line("format", found.get("submission.format"),
                                                    _key(found, "submission.format"), indent=2), ""]
    return "\n".join(lines)


def _key(found: infer.Inference, path: str) -> infer.Key:
    return next(key for key in found.keys if key.path == path)


def _line(name: str, value: Any, key: infer.Key, indent: int = 0) -> str:
    comment = f"# check: {key.why}" if key.check else f"# {key.why}"
    return f"{' ' * indent}{name}: {_flow(value)}  {comment}"


def _flow(value: Any) -> str:
    """``value`` as one line of YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text[:-len("\n...")].strip() if text.endswith("\n...") else text


def _key_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
