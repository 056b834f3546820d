"""``models/<model>/manifest.json``: how a model's OOF and test predictions were made -- the
resolved config, package versions, git commit, seeds, device, and each fold's score, time and
memory (and, under seed bagging, each seed's). Written by the train stage beside the model's
fold folders."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

from foldstack.core.config import ModelConfig, PipelineConfig
from foldstack.core.files import write_json

NAME = "manifest.json"
PACKAGES = ("keras", "tensorflow", "jax", "albumentations", "numpy", "pandas", "scikit-learn", "lightgbm")
FOLD_KEYS = ("fold", "score", "seconds", "epochs", "peak_mb", "rss_mb", "pseudo_labelled")


def write(model_dir: Path, cfg: PipelineConfig, model: ModelConfig, folds: list[dict], cv_score: float,
          features_seconds: float | None, per_seed: dict[int, dict] | None = None,
          extra: dict | None = None) -> dict:
    """Write the manifest of ``model`` from its folds' ``done.json`` records; returns it.

    Under seed bagging ``folds`` are the bagged folds (each one's score is that of its seeds'
    mean) and ``per_seed`` maps each seed to its own ``cv_score`` and ``folds`` records (its
    runs alone), written as ``seed_runs``. ``extra``: the external rows every fold trained on
    (``rows``, their ``digest``, rows per ``datasets`` index), written as ``extra`` where there are any."""
    manifest = {
        "pipeline": cfg.model_dump(mode="json"),
        "model": model.model_dump(mode="json"),
        "cv_score": cv_score,
        "metric": cfg.metric,
        "folds": [{key: record.get(key) for key in FOLD_KEYS} for record in folds],
        "features_seconds": features_seconds,  # the features regime's one-off backbone pass
        **({"seed_runs": {str(seed): runs for seed, runs in per_seed.items()}} if per_seed else {}),
        **({"extra": extra} if extra else {}),
        "seeds": {"pipeline": cfg.seed, "folds": cfg.folds.seed},
        "device": next((record["device"] for record in folds if "device" in record), None),
        "versions": _versions(),
        "git_commit": _git_commit(),
    }
    write_json(model_dir / NAME, manifest)
    return manifest


def read(model_dir: Path) -> dict:
    return json.loads((model_dir / NAME).read_text(encoding="utf-8"))


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
