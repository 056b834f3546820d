"""The `train` stage: every model of the pipeline on every fold, then its OOF file. It reads
the test set only for a pseudo-labelled model (``pseudo_labels``: its teachers' fold-k models
label the test images its fold k trains on, :mod:`foldstack.training.rounds`); otherwise the
predict stage (:mod:`foldstack.stages.predict`) predicts it with the trained folds, so a new test
set trains nothing.

Each fold trains in a process of its own (:mod:`foldstack.runtime.isolate`; the Keras side is
:mod:`foldstack.training.worker`), so its model's memory is returned before the next fold starts;
this process never imports Keras. Each finished (model, fold) -- each (model, fold, seed) under
seed bagging (``fold_task.members``) -- leaves its ``done.json`` with a fingerprint of what
produced it; a rerun skips every run whose fingerprint still matches, and an interrupted run
resumes from its last epoch.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from foldstack.contracts import fold_done, folds_file, manifest, predictions
from foldstack.core import metrics
from foldstack.core.config import ModelConfig, PipelineConfig
from foldstack.core.errors import DataError, FoldstackError
from foldstack.core.paths import Paths
from foldstack.data import tables
from foldstack.data.arrays import ImageReader
from foldstack.data.cache import model_cache
from foldstack.data.labels import FineClasses
from foldstack.runtime import compute, isolate
from foldstack.runtime.executor import Job
from foldstack.runtime.memory import memory_mb
from foldstack.training.fold_task import (
    BEST,
    DEFAULT_WORKERS,
    WORKER,
    FoldTask,
    JoinedRows,
    Member,
    digest,
    features_key,
    fold_fingerprint,
    members,
    network_classes,
    network_targets,
    train_split,
    training_target,
)
from foldstack.training.meta import MetaRows
from foldstack.training.rounds import SplitImages, Teachers, round_fields, source_key

log = logging.getLogger(__name__)


class FoldFailed(FoldstackError):
    """A fold that ended without its best weights; it is not marked done, so it trains again."""


class Trainer:
    """Trains the pipeline's models fold by fold; one instance per ``train`` run."""

    def __init__(self, cfg: PipelineConfig, paths: Paths, workers: int | None = None):
        self.cfg = cfg
        self.paths = paths
        self.workers = workers or DEFAULT_WORKERS
        self.metric = metrics.get(cfg.metric)
        self.folds = folds_file.read(paths.folds, cfg.folds.k)
        self.read = ImageReader.of(cfg.data)
        self.files = self._train_files()
        self.classes = folds_file.read_classes(paths.folds, cfg)
        self.y = self.classes.encode(self.folds.set_index("id")["label"], paths.folds)
        # With data.train_label the networks train on finer classes, summed back onto the scored ones.
        self.fine = FineClasses.of(cfg.data.label_map, self.classes) if cfg.data.train_label else None
        self.network_y = self.y if self.fine is None else \
            tables.fine_labels(cfg, paths, self.folds["id"].to_numpy(), self.fine)
        self.extra = folds_file.read_extra(paths.folds)
        self.extra_files = self._extra_files()
        self.device: dict | None = None  # what the first trained fold ran on, logged once
        self.folds_digest = folds_file.digest(self.folds, self.classes, self.extra)
        self.images = SplitImages(cfg, paths, self.files, self.folds["id"].tolist())
        self.teachers = Teachers(cfg, paths, self.images, len(self.classes), self.folds_digest, self.workers)

    def _train_files(self) -> list[str]:
        return folds_file.image_files(self.folds, tables.load_train_table(self.cfg, self.paths), self.paths.folds)

    def _extra_files(self) -> list[str]:
        """The external rows' images, once ``extra.csv`` is checked against ``data.extra`` as it
        is now (ids, labels, file sizes): changed external data is new folds, trained again."""
        source = folds_file.extra_path(self.paths.folds)
        table = tables.load_extra_table(self.cfg, self.paths, self.classes)
        if not len(self.extra) and not len(table):
            return []
        if not len(self.extra):
            raise DataError(f"{source}: not found, but data.extra lists {len(table)} images; run `make folds` again")
        files = folds_file.image_files(self.extra, table, source)
        sizes = [Path(path).stat().st_size for path in files]
        changed = np.flatnonzero(np.asarray(sizes) != self.extra["bytes"].astype(int).to_numpy())
        if len(changed):
            raise DataError(f"{source}: image {files[changed[0]]} changed since `make folds` (size "
                            f"{sizes[changed[0]]}, not {self.extra['bytes'].iloc[changed[0]]}); run `make folds` again")
        return files

    # --- running -----------------------------------------------------------------------------

    def run(self, only: list[str] | None = None) -> dict[str, float]:
        """Train every model (or those named in ``only``); returns each model's CV score."""
        models = [self.cfg.model(name) for name in only] if only else list(self.cfg.models)
        k = self.cfg.folds.k
        scores = {}
        with (compute.executor_for(self.cfg.compute, WORKER) as self.executor,
              tqdm(total=sum(m.epochs * len(members(m, k, self.cfg.seed)) for m in models), desc="train",
                   unit="epoch") as bar):
            for model in models:
                scores[model.name] = self.train_model(model, bar)
        return scores

    def train_model(self, model: ModelConfig, bar: tqdm) -> float:
        ids = self.folds["id"].tolist()
        # The model's own size, then each progressive-resizing size (a cache of its own).
        caches = {}
        keys = {"train": features_key(model, self.cfg.augment, ids)}
        for size in [model.image_size, *(step.size for step in model.progressive or [])]:
            own = None if size == model.image_size else size
            caches[train_split(own)] = model_cache(self.paths.cache, "train", self.files, ids, model, size,
                                                    read=self.read)
            if model.pseudo_labels:  # its folds train on test images too
                caches[train_split(own, "test")] = self.images.cache("test", model, size)
            if self.extra_files:  # and every fold on the external images
                caches[train_split(own, "extra")] = model_cache(self.paths.cache, "extra", self.extra_files,
                                                                self.extra["id"].tolist(), model, size,
                                                                read=self.read)
        if model.pseudo_labels:
            keys["test"] = features_key(model, self.cfg.augment, self.images.ids("test"))
        if self.extra_files:
            keys["extra"] = features_key(model, self.cfg.augment, self.extra["id"].tolist())
        runs = members(model, self.cfg.folds.k, self.cfg.seed)
        fingerprints = {run: self._fingerprint(model, run) for run in runs}
        meta = self._meta_rows(model)
        sources = [with_meta(source_key(model, fold, self.teachers), meta) for fold in range(self.cfg.folds.k)]
        features, features_seconds = None, None
        if model.regime == "features":
            features = self.paths.models / model.name / "features"
            # The backbone pass is needed only while some fold is still to train.
            if any(fold_done.finished(self._fold_dir(model, run), fingerprints[run], sources[run.fold]) is None
                   for run in runs):
                started = time.perf_counter()
                isolate.call(f"{WORKER}:build_features", model, {split: caches[split] for split in keys},
                             self.cfg.augment, features, keys, self.workers)
                features_seconds = round(time.perf_counter() - started, 2)
        results, jobs, ticks, run_of = {}, [], {}, {}
        for run in runs:
            task = self._fold_task(model, run, caches, features, fingerprints[run], sources[run.fold], meta)
            if isinstance(task, dict):  # already trained
                results[run] = task
                bar.update(model.epochs)
                continue
            ticks[run] = 0

            def tick(val_score: float | None, run: Member = run) -> None:
                ticks[run] += 1
                bar.update(1)
                if val_score is not None:
                    bar.set_postfix(score=f"{val_score:.4f}")

            jobs.append(Job(self._what(model, run), f"{WORKER}:train_fold", (task,), tick,
                            needs=(*caches.values(), *([features] if features else []))))
            run_of[jobs[-1].name] = run

        failed = []

        def done(job: Job, result: dict, seconds: float) -> None:
            run = run_of[job.name]
            bar.update(max(0, model.epochs - ticks[run]))  # early stopping ends a fold early; a retry ticks again
            fold_dir = job.args[0].fold_dir
            if not (fold_dir / BEST).is_file():  # the others go on; this one is reported once they end
                failed.append(f"{fold_dir / BEST}: {job.name} ended without a checkpoint: no epoch's "
                              f"{self.cfg.metric} was a finite number (does its validation fold hold one class?); "
                              "not marked done, so the next run trains it again")
                return
            results[run] = self._finish_fold(model, run, job.args[0], result, seconds, fingerprints[run],
                                             sources[run.fold])

        self.executor.run(jobs, done)
        if failed:
            raise FoldFailed(failed[0] + (f" (and {len(failed) - 1} more fold(s))" if len(failed) > 1 else ""))
        return self._merge(model, {run: results[run] for run in runs}, features_seconds)

    def _fingerprint(self, model: ModelConfig, run: Member) -> str:
        return fold_fingerprint(self.cfg, model, run.seed, self.folds_digest)

    def _fold_dir(self, model: ModelConfig, run: Member) -> Path:
        return self.paths.models / model.name / run.name

    @staticmethod
    def _what(model: ModelConfig, run: Member) -> str:
        """The run as the terminal names it: ``cnn fold 2``, or ``cnn fold 2 seed 7`` when bagged."""
        return f"{model.name} fold {run.fold}" + (f" seed {run.seed}" if model.seeds else "")

    def _meta_rows(self, model: ModelConfig) -> MetaRows | None:
        """Every training row's table columns (the model's ``meta``), in folds.csv order."""
        if model.meta is None:
            return None
        table = tables.feature_table(self.cfg, self.paths, "train", self.folds["id"].to_numpy(), model.meta,
                                     f"model {model.name!r} meta")
        return MetaRows.of(table, model.meta)

    def _fold_task(self, model: ModelConfig, run: Member, caches: dict[str, Path], features: Path | None,
                   fingerprint: str, source: str | None = None, meta: MetaRows | None = None) -> FoldTask | dict:
        """The run's task, its folder made ready; or its ``done.json`` if it is trained already."""
        fold = run.fold
        fold_dir = self._fold_dir(model, run)
        what = self._what(model, run)
        done = fold_done.finished(fold_dir, fingerprint, source)
        if done is not None:
            tqdm.write(f"skip {what}: already trained ({self.cfg.metric} {done['score']:.4f})")
            return done
        if fold_done.exists(fold_dir):
            log.info("%s: its recipe or teachers changed, training again", what)
        trained_by = fingerprint if source is None else f"{fingerprint} {source}"
        if fold_dir.exists() and _fingerprint_of(fold_dir) != trained_by:
            shutil.rmtree(fold_dir)  # leftovers (backups, checkpoints) of another recipe or teacher
        fold_dir.mkdir(parents=True, exist_ok=True)
        (fold_dir / "fingerprint").write_text(trained_by)

        is_valid = (self.folds["fold"] == fold).to_numpy()
        network_task, n_outputs = network_classes(self.cfg, len(self.classes))
        # Fine classes: their log loss picks the best epoch (the scored metric may not take them).
        metric = self.cfg.metric if self.fine is None else "log_loss"
        task = FoldTask(
            model=model, task=network_task, metric=metric, y=self.network_y, n_classes=n_outputs,
            train_index=np.flatnonzero(~is_valid), valid_index=np.flatnonzero(is_valid), augment=self.cfg.augment,
            caches=caches, fold_dir=fold_dir, seed=run.run_seed, workers=self.workers,
            class_weight=self._class_weight(model, ~is_valid), features=features, extra=self._extra_rows(),
            target=training_target(self.cfg), meta=meta,
            **round_fields(model, fold, np.flatnonzero(~is_valid), self.y, len(self.classes), self.classes.multilabel,
                           self.teachers.predictions),
        )
        return task

    def _extra_rows(self) -> JoinedRows | None:
        """Every external row, with its target: the same rows join the training side of every fold."""
        if not self.extra_files:
            return None
        y = self.classes.encode(self.extra.set_index("id")["label"], folds_file.extra_path(self.paths.folds))
        return JoinedRows(index=np.arange(len(self.extra)), targets=network_targets(self.cfg.task, y, len(self.classes)))

    def _finish_fold(self, model: ModelConfig, run: Member, task: FoldTask, result: dict, seconds: float,
                     fingerprint: str, source: str | None) -> dict:
        """Score the run's OOF rows and write them, then its ``done.json``."""
        fold, fold_dir = run.fold, task.fold_dir
        if self.device is None:
            self.device = result["device"]
            log.info("backend %s, %d GPU(s), mixed precision %s", self.device["backend"], self.device["gpus"],
                     "on" if self.device["mixed_precision"] else "off")
        oof = result["oof"] if self.fine is None else self.fine.summed(result["oof"])
        score = self.metric(self.y[task.valid_index], oof, n_classes=len(self.classes))

        ids = self.folds["id"].to_numpy()
        predictions.write(fold_dir / "oof.parquet", ids[task.valid_index], self.classes, oof, fold=fold)
        done = {"fold": fold, "seed": run.seed, "score": score, "seconds": round(seconds, 2),
                "fingerprint": fingerprint, "source": source,
                "pseudo_labelled": None if task.pseudo is None else len(task.pseudo.index),
                "epochs": _epochs_run(fold_dir), "resumed_from": result["resumed_from"], "device": result["device"],
                "averaged": result.get("averaged"),  # the epochs best.weights.h5 averages (`average`)
                "peak_mb": result["peak_mb"],  # the fold's own process, at its peak
                "rss_mb": memory_mb()}  # this process after the fold: should stay flat
        fold_done.write(fold_dir, done)  # last: the fold counts as finished only once this exists
        tqdm.write(f"{self._what(model, run)}: {self.cfg.metric} {score:.4f} ({seconds:.0f} s)")
        return done

    def _class_weight(self, model: ModelConfig, rows: np.ndarray) -> dict[int, float] | None:
        if not model.class_weights or self.cfg.task == "multilabel":
            return None
        y = self.network_y[rows]
        present = np.unique(y)
        weights = compute_class_weight("balanced", classes=present, y=y)
        return {int(c): float(w) for c, w in zip(present, weights)}

    def _merge(self, model: ModelConfig, results: dict[Member, dict], features_seconds: float | None) -> float:
        """Join the folds into ``oof/<model>.parquet`` (with ``seeds``, each fold's runs averaged),
        with a manifest that records each seed's scores beside the bagged ones."""
        fold_index = self.folds.set_index("id")
        names = list(self.classes.columns)
        runs = {run: predictions.read_oof(self._fold_dir(model, run) / "oof.parquet", self.classes,
                                          fold_index[fold_index["fold"] == run.fold], self.paths.folds)
                for run in results}
        oof = pd.concat([
            _mean_oof([table for run, table in runs.items() if run.fold == fold], names)
            for fold in range(self.cfg.folds.k)]).loc[fold_index.index]
        score = self.metric(self.y, oof[names].to_numpy(), n_classes=len(self.classes))
        predictions.write(self.paths.oof / f"{model.name}.parquet", oof.index.to_numpy(), self.classes,
                          oof[names].to_numpy(), fold=oof["fold"].to_numpy())
        if model.seeds:
            folds = [self._bagged_fold(fold, oof, {run: record for run, record in results.items() if run.fold == fold})
                     for fold in range(self.cfg.folds.k)]
            per_seed = {seed: self._seed_scores(seed, runs, results) for seed in model.seeds}
        else:
            folds, per_seed = list(results.values()), None
        extra = {"rows": len(self.extra), "digest": folds_file.extra_digest(self.extra),
                 "datasets": self.extra["dataset"].value_counts().sort_index().to_dict()} if len(self.extra) else None
        manifest.write(self.paths.models / model.name, self.cfg, model, folds, score, features_seconds, per_seed, extra)
        fold_scores = ", ".join(f"{record['score']:.4f}" for record in folds)
        bagged = f", bagged over seeds {', '.join(map(str, model.seeds))}" if model.seeds else ""
        tqdm.write(f"{model.name}: CV {self.cfg.metric} {score:.4f} (folds {fold_scores}{bagged})")
        return score

    def _bagged_fold(self, fold: int, oof: pd.DataFrame, records: dict[Member, dict]) -> dict:
        """A fold's manifest record under seed bagging: the score of its runs' mean, their time."""
        rows = oof[oof["fold"] == fold]
        return {"fold": fold, "score": self.metric(self.y[self.folds["fold"].to_numpy() == fold],
                                                   rows[list(self.classes.columns)].to_numpy(),
                                                   n_classes=len(self.classes)),
                "seconds": round(sum(record["seconds"] for record in records.values()), 2),
                "epochs": sum(record.get("epochs", 0) for record in records.values()),
                "peak_mb": max((record.get("peak_mb") or 0) for record in records.values()),
                "rss_mb": max((record.get("rss_mb") or 0) for record in records.values())}

    def _seed_scores(self, seed: int, runs: dict[Member, pd.DataFrame], results: dict[Member, dict]) -> dict:
        """One seed's CV (its own runs of every fold, not averaged with the other seeds) and runs."""
        own = pd.concat([table for run, table in runs.items() if run.seed == seed]).loc[self.folds["id"]]
        return {"cv_score": self.metric(self.y, own[list(self.classes.columns)].to_numpy(), n_classes=len(self.classes)),
                "folds": [{key: record.get(key) for key in manifest.FOLD_KEYS}
                          for run, record in results.items() if run.seed == seed]}


def _mean_oof(tables: list[pd.DataFrame], names: list[str]) -> pd.DataFrame:
    """One fold's OOF rows averaged over its runs (seeds): the same ids, each row's mean."""
    mean = tables[0].copy()
    mean[names] = np.mean([table.loc[mean.index, names].to_numpy(np.float64) for table in tables], axis=0)
    return mean


def with_meta(source: str | None, meta: MetaRows | None) -> str | None:
    """A fold's source key (``rounds.source_key``) with its table columns' values: changed
    columns in the train table train the fold again (the predict stage, which may lack the train
    table, checks the recipe alone)."""
    if meta is None:
        return source
    return digest({"source": source, "meta": [meta.numbers.tolist(), meta.categories.tolist()]})


def _fingerprint_of(fold_dir: Path) -> str | None:
    marker = fold_dir / "fingerprint"
    return marker.read_text() if marker.exists() else None


def _epochs_run(fold_dir: Path) -> int:
    log_file = fold_dir / "log.csv"
    return max(0, len(log_file.read_text().splitlines()) - 1) if log_file.exists() else 0


def run(cfg: PipelineConfig, paths: Paths, only: list[str] | None = None,
        workers: int | None = None) -> dict[str, float]:
    """Train the pipeline's models (or those in ``only``) and write their OOF files."""
    return Trainer(cfg, paths, workers=workers).run(only)
