"""The `train` stage: every model of the pipeline on every fold, then its OOF and test files.

Each fold trains in a process of its own (``isolate``; the Keras side is ``fold_worker``), so
its model's memory is returned before the next fold starts; this process never imports Keras.
Each finished (model, fold) leaves ``models/<model>/fold<k>/done.json`` with a fingerprint of
what produced it (the model's config, the augmentation, the folds). A rerun skips every fold
whose fingerprint still matches, so an interrupted ``make train`` redoes no finished work; an
interrupted fold resumes from its last epoch through Keras's ``BackupAndRestore``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from foldstack import data, isolate, metrics
from foldstack.config import ModelConfig, PipelineConfig
from foldstack.errors import DataError
from foldstack.fold import FoldTask
from foldstack.images import cached_images
from foldstack.io import write_json, write_parquet
from foldstack.metrics import metric_targets
from foldstack.paths import Paths

log = logging.getLogger(__name__)

PACKAGES = ("keras", "tensorflow", "jax", "albumentations", "numpy", "pandas", "scikit-learn", "lightgbm")


def read_folds(paths: Paths, k: int) -> pd.DataFrame:
    """``folds.csv``, checked: the three columns, unique ids, integer folds ``0 .. k-1``."""
    frame = data.read_csv(paths.folds, "folds file (run `make folds`)")
    data.require_columns(frame, ["id", "label", "fold"], paths.folds)
    if frame["id"].duplicated().any():
        raise DataError(f"{paths.folds}: id {frame['id'][frame['id'].duplicated()].iloc[0]!r} appears twice")
    try:
        frame["fold"] = frame["fold"].astype(int)
    except ValueError:
        raise DataError(f"{paths.folds}: column 'fold' must hold integers") from None
    # A folds.csv from another folds.k would leave folds untrained and ids without a prediction.
    found = sorted(frame["fold"].unique().tolist())
    if found != list(range(k)):
        raise DataError(f"{paths.folds}: holds folds {found} but folds.k = {k}; run `make folds` again")
    return frame


class Trainer:
    """Trains the pipeline's models fold by fold; one instance per ``train`` run."""

    def __init__(self, cfg: PipelineConfig, paths: Paths, workers: int | None = None):
        self.cfg = cfg
        self.paths = paths
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.metric = metrics.get(cfg.metric)
        self.folds = read_folds(paths, cfg.folds.k)
        self.files = self._train_files()
        self.test = data.load_test_table(cfg, paths)
        self.classes = data.class_names(self.folds["label"], cfg.task)
        self.targets = self._targets()
        self.device: dict | None = None  # what the first trained fold ran on, logged once
        self.folds_digest = hashlib.sha256(pd.util.hash_pandas_object(self.folds, index=False).values).hexdigest()

    def _train_files(self) -> list[str]:
        """The image of each folds.csv row, after checking that folds.csv still matches the train table."""
        table = data.load_train_table(self.cfg, self.paths).set_index("id")
        unknown = self.folds.loc[~self.folds["id"].isin(table.index), "id"]
        if len(unknown) or len(table) != len(self.folds):
            example = unknown.iloc[0] if len(unknown) else sorted(set(table.index) - set(self.folds["id"]))[0]
            raise DataError(f"{self.paths.folds}: ids differ from the train table (e.g. {example!r}); "
                            "run `make folds` again")
        # A label edited in the train table after `folds` ran would otherwise train on the old one.
        relabelled = self.folds["label"].to_numpy() != table.loc[self.folds["id"], "label"].to_numpy()
        if relabelled.any():
            row = self.folds[relabelled].iloc[0]
            raise DataError(f"{self.paths.folds}: id {row['id']!r} has label {row['label']!r} but the train "
                            f"table says {table.loc[row['id'], 'label']!r}; run `make folds` again")
        return table.loc[self.folds["id"], "path"].tolist()

    def _targets(self) -> np.ndarray:
        labels = data.label_matrix(self.folds["label"], self.classes, self.cfg.task)
        if self.cfg.task == "multilabel":
            return labels
        return np.eye(len(self.classes), dtype=np.float32)[labels]

    # --- running -----------------------------------------------------------------------------

    def run(self, only: list[str] | None = None) -> dict[str, float]:
        """Train every model (or those named in ``only``); returns each model's CV score."""
        models = [self.cfg.model(name) for name in only] if only else list(self.cfg.models)
        k = self.cfg.folds.k
        scores = {}
        with tqdm(total=sum(m.epochs for m in models) * k, desc="train", unit="epoch") as bar:
            for model in models:
                scores[model.name] = self.train_model(model, bar)
        return scores

    def train_model(self, model: ModelConfig, bar: tqdm) -> float:
        size = model.input_size  # the config checked it fits the backbone
        caches = {split: self.paths.cache / str(size) / f"{split}.npy" for split in ("train", "test")}
        cached_images(self.files, self.folds["id"].tolist(), size, caches["train"], desc="train")
        cached_images(self.test["path"].tolist(), self.test["id"].tolist(), size, caches["test"], desc="test")
        fingerprint = self._fingerprint(model)
        features, features_seconds = None, None
        # The backbone pass is needed only while some fold is still to train.
        if model.regime == "features" and any(self._finished(model, f, fingerprint) is None
                                               for f in range(self.cfg.folds.k)):
            features = self.paths.models / model.name / "features"
            started = time.perf_counter()
            isolate.call("foldstack.fold_worker:build_features", model, caches, self.cfg.augment, features,
                         fingerprint, self.workers)
            features_seconds = round(time.perf_counter() - started, 2)
        results = []
        for fold in range(self.cfg.folds.k):
            start = bar.n
            results.append(self._train_fold(model, fold, size, caches, features, fingerprint, bar))
            bar.update(start + model.epochs - bar.n)  # early stopping and skips end a fold early
        return self._merge(model, results, features_seconds)

    def _fingerprint(self, model: ModelConfig) -> str:
        recipe = {"model": model.model_dump(mode="json"), "augment": self.cfg.augment.model_dump(mode="json"),
                  "task": self.cfg.task, "metric": self.cfg.metric, "seed": self.cfg.seed,
                  "folds": self.folds_digest, "test": self.test["id"].tolist()}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()

    def _train_fold(self, model: ModelConfig, fold: int, size: int, caches: dict[str, Path],
                    features: Path | None, fingerprint: str, bar: tqdm) -> dict:
        fold_dir = self.paths.models / model.name / f"fold{fold}"
        done_file = fold_dir / "done.json"
        done = self._finished(model, fold, fingerprint)
        if done is not None:
            tqdm.write(f"skip {model.name} fold {fold}: already trained ({self.cfg.metric} {done['score']:.4f})")
            return done
        if done_file.exists():
            log.info("%s fold %d: its recipe changed, training again", model.name, fold)
        if fold_dir.exists() and _fingerprint_of(fold_dir) != fingerprint:
            shutil.rmtree(fold_dir)  # leftovers (backups, checkpoints) of another recipe
        fold_dir.mkdir(parents=True, exist_ok=True)
        (fold_dir / "fingerprint").write_text(fingerprint)

        is_valid = (self.folds["fold"] == fold).to_numpy()
        task = FoldTask(
            model=model, task=self.cfg.task, metric=self.cfg.metric, size=size, caches=caches,
            targets=self.targets, train_index=np.flatnonzero(~is_valid), valid_index=np.flatnonzero(is_valid),
            augment=self.cfg.augment, fold_dir=fold_dir, seed=self.cfg.seed + fold, workers=self.workers,
            features=features, features_key=fingerprint, class_weight=self._class_weight(model, ~is_valid),
        )

        def tick(val_score: float | None) -> None:
            bar.update(1)
            if val_score is not None:
                bar.set_postfix(score=f"{val_score:.4f}")

        started = time.perf_counter()
        result = isolate.call("foldstack.fold_worker:train_fold", task, on_message=tick)
        seconds = time.perf_counter() - started
        if self.device is None:
            self.device = result["device"]
            log.info("backend %s, %d GPU(s), mixed precision %s", self.device["backend"], self.device["gpus"],
                     "on" if self.device["mixed_precision"] else "off")
        score = self.metric(metric_targets(self.targets[task.valid_index], self.cfg.task), result["oof"])

        ids = self.folds["id"].to_numpy()
        write_parquet(fold_dir / "oof.parquet", self._frame(ids[task.valid_index], result["oof"], fold=fold))
        write_parquet(fold_dir / "test.parquet", self._frame(self.test["id"].to_numpy(), result["test"]))
        done = {"fold": fold, "score": score, "seconds": round(seconds, 2), "fingerprint": fingerprint,
                "epochs": _epochs_run(fold_dir), "device": result["device"],
                "peak_mb": result["peak_mb"],  # the fold's own process, at its peak
                "rss_mb": isolate.memory_mb()}  # this process after the fold: should stay flat
        write_json(done_file, done)  # last: the fold counts as finished only once this exists
        tqdm.write(f"{model.name} fold {fold}: {self.cfg.metric} {score:.4f} ({seconds:.0f} s)")
        return done

    def _finished(self, model: ModelConfig, fold: int, fingerprint: str) -> dict | None:
        """The fold's ``done.json`` if it was trained by this very recipe, else None."""
        done_file = self.paths.models / model.name / f"fold{fold}" / "done.json"
        if done_file.exists():
            done = json.loads(done_file.read_text())
            if done.get("fingerprint") == fingerprint:
                return done
        return None

    def _class_weight(self, model: ModelConfig, rows: np.ndarray) -> dict[int, float] | None:
        if not model.class_weights or self.cfg.task == "multilabel":
            return None
        y = self.targets[rows].argmax(axis=1)
        present = np.unique(y)
        weights = compute_class_weight("balanced", classes=present, y=y)
        return {int(c): float(w) for c, w in zip(present, weights)}

    def _frame(self, ids: np.ndarray, proba: np.ndarray, fold: int | None = None) -> pd.DataFrame:
        frame = pd.DataFrame(proba.astype(np.float64), columns=self.classes)
        frame.insert(0, "id", ids)
        if fold is not None:
            frame.insert(1, "fold", fold)
        return frame

    def _merge(self, model: ModelConfig, results: list[dict], features_seconds: float | None) -> float:
        """Join the folds into ``oof/<model>.parquet`` and ``test/<model>.parquet``, with a manifest."""
        model_dir = self.paths.models / model.name
        parts = [pd.read_parquet(model_dir / f"fold{fold}" / "oof.parquet") for fold in range(self.cfg.folds.k)]
        oof = pd.concat(parts).set_index("id").loc[self.folds["id"]].reset_index()
        tests = [pd.read_parquet(model_dir / f"fold{fold}" / "test.parquet").set_index("id")
                 for fold in range(self.cfg.folds.k)]
        test = (sum(tests) / len(tests)).loc[self.test["id"]].reset_index()
        score = self.metric(metric_targets(self.targets, self.cfg.task), oof[self.classes].to_numpy())
        write_parquet(self.paths.oof / f"{model.name}.parquet", oof)
        write_parquet(self.paths.test / f"{model.name}.parquet", test)
        write_json(model_dir / "manifest.json", self._manifest(model, results, score, features_seconds))
        fold_scores = ", ".join(f"{r['score']:.4f}" for r in results)
        tqdm.write(f"{model.name}: CV {self.cfg.metric} {score:.4f} (folds {fold_scores})")
        return score

    def _manifest(self, model: ModelConfig, results: list[dict], score: float,
                  features_seconds: float | None) -> dict:
        return {
            "pipeline": self.cfg.model_dump(mode="json"),
            "model": model.model_dump(mode="json"),
            "cv_score": score,
            "metric": self.cfg.metric,
            "folds": [{k: r.get(k) for k in ("fold", "score", "seconds", "epochs", "peak_mb", "rss_mb")}
                      for r in results],
            "features_seconds": features_seconds,  # the features regime's one-off backbone pass
            "seeds": {"pipeline": self.cfg.seed, "folds": self.cfg.folds.seed},
            "device": next((r["device"] for r in results if "device" in r), None),  # backend, GPUs
            "versions": _versions(),
            "git_commit": _git_commit(),
        }


def _fingerprint_of(fold_dir: Path) -> str | None:
    marker = fold_dir / "fingerprint"
    return marker.read_text() if marker.exists() else None


def _epochs_run(fold_dir: Path) -> int:
    log_file = fold_dir / "log.csv"
    return max(0, len(log_file.read_text().splitlines()) - 1) if log_file.exists() else 0


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


def run(cfg: PipelineConfig, paths: Paths, only: list[str] | None = None, workers: int | None = None) -> dict[str, float]:
    """Train the pipeline's models (or those in ``only``) and write their OOF and test files."""
    return Trainer(cfg, paths, workers=workers).run(only)
