"""The `predict` stage: every trained fold of every model predicts the test images (the sample
submission's ids) with the pipeline's TTA views, into ``models/<m>/fold<k>/test.parquet`` and
``test/<m>.parquet`` (the mean over folds and views); and ``foldstack predict --images``, the
same models and the saved stack on any folder of images.

Each model's folds run in a process of their own (:mod:`foldstack.training.worker`), so this
process never imports Keras. A model's test file is up to date while its key holds: the folds'
recipe and weights, the test ids and the transforms; a new test set predicts again and trains
nothing. The first model also leaves ``models/<m>/reference.npz``
(:mod:`foldstack.contracts.reference`), how the training images look to it, against which
``--images`` names the images unlike them.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from foldstack.contracts import folds_file, predictions, reference, stack_output
from foldstack.core.config import ModelConfig, PipelineConfig, hw
from foldstack.core.errors import DataError, shorten
from foldstack.core.files import atomic_dir, write_csv
from foldstack.core.metrics import hard_predictions
from foldstack.core.paths import Paths
from foldstack.data import tables
from foldstack.data.arrays import ImageReader, array_files
from foldstack.data.cache import model_cache, size_name
from foldstack.data.images import DICOM_EXTENSIONS, resize
from foldstack.data.labels import Classes, FineClasses
from foldstack.plots.heatmaps import overlay
from foldstack.runtime import compute, isolate
from foldstack.runtime.executor import Job
from foldstack.training.meta import MetaRows
from foldstack.training.fold_task import (
    DEFAULT_WORKERS,
    WORKER,
    FoldTask,
    PredictTask,
    digest,
    members,
    network_classes,
    predict_task,
    trained_fold_dirs,
    weights_digest,
)

log = logging.getLogger(__name__)


class Predictor:
    """The pipeline's trained folds, checked against the pipeline; one instance per run."""

    def __init__(self, cfg: PipelineConfig, paths: Paths, workers: int | None = None):
        self.cfg = cfg
        self.paths = paths
        self.workers = workers or DEFAULT_WORKERS
        self.folds = folds_file.read(paths.folds, cfg.folds.k)
        self.classes = folds_file.read_classes(paths.folds, cfg)
        self.folds_digest = folds_file.digest(self.folds, self.classes, folds_file.read_extra(paths.folds))
        self.fine = FineClasses.of(cfg.data.label_map, self.classes) if cfg.data.train_label else None

    def scored(self, proba: np.ndarray) -> np.ndarray:
        """A fold's probabilities over the scored classes: with ``data.train_label``, its fine
        classes' summed onto them (every later stage sees the scored classes only)."""
        return proba if self.fine is None else self.fine.summed(proba)

    def fold_dirs(self, model: ModelConfig) -> tuple[Path, ...]:
        """Each fold's folder -- each (fold, seed)'s under seed bagging, fold by fold -- once it
        is checked to hold weights of the pipeline's recipe
        (:func:`~foldstack.training.fold_task.trained_fold_dirs`)."""
        return trained_fold_dirs(self.cfg, self.paths.models, model, self.folds_digest)

    def task(self, model: ModelConfig, images: Path, fold_dirs: tuple[Path, ...], split: str | None,
             ids: list[str] | None = None, meta: MetaRows | None = None) -> PredictTask:
        """What the worker needs to predict ``images`` (a ``.npy``) with ``fold_dirs``; ``meta``:
        the images' table columns, for a model that reads them."""
        return predict_task(self.cfg, self.paths.models, model, len(self.classes), images, fold_dirs, split, ids,
                            self.workers, meta)

    def test_meta(self, model: ModelConfig, ids: list[str]) -> MetaRows | None:
        """The test rows' table columns (the model's ``meta``) from the test table (the test CSV,
        else the sample submission), as ``stack.features`` reads them; None without ``meta``."""
        if model.meta is None:
            return None
        table = tables.feature_table(self.cfg, self.paths, "test", np.asarray(ids), model.meta,
                                     f"model {model.name!r} meta")
        return MetaRows.of(table, model.meta)

    def test_set(self) -> None:
        """Predict the test set with every model whose test file is stale; refresh the reference."""
        cfg, paths = self.cfg, self.paths
        test = tables.load_test_table(cfg, paths)
        ids = test["id"].tolist()
        with (compute.executor_for(cfg.compute, WORKER) as executor,
              tqdm(total=sum(len(members(m, cfg.folds.k, cfg.seed)) for m in cfg.models), desc="predict",
                   unit="fold") as bar):
            jobs, stale, ticks = [], {}, {}
            for model in cfg.models:
                dirs = self.fold_dirs(model)
                k = len(dirs)
                meta = self.test_meta(model, ids)
                columns = {} if meta is None else {"meta": [meta.numbers.tolist(), meta.categories.tolist()]}
                key = digest({"weights": weights_digest(dirs), "ids": ids, "task": cfg.task, **columns,
                              "classes": list(self.classes.names),
                              "model": model.model_dump(mode="json"), "augment": cfg.augment.model_dump(mode="json")})
                out = paths.test / f"{model.name}.parquet"
                if predictions.is_current(out, key):
                    tqdm.write(f"skip {model.name}: test predictions up to date")
                    bar.update(k)
                    continue
                started = time.perf_counter()
                cache = model_cache(paths.cache, "test", test["path"].tolist(), ids, model, read=ImageReader.of(cfg.data))
                # Decoding counts in the kernel's time too; each model is charged its own size's cache.
                stale[model.name], ticks[model.name] = (dirs, key, out, time.perf_counter() - started), 0

                def tick(_: None, name: str = model.name) -> None:
                    ticks[name] += 1
                    bar.update(1)

                jobs.append(Job(model.name, f"{WORKER}:predict_folds", (self.task(model, cache, dirs, "test", ids, meta),),
                                tick, needs=(cache, *dirs)))

            def done(job: Job, folds: list[np.ndarray], seconds: float) -> None:
                dirs, key, out, decoding = stale[job.name]
                folds = [self.scored(proba) for proba in folds]
                for fold_dir, proba in zip(dirs, folds):
                    predictions.write(fold_dir / "test.parquet", np.asarray(ids), self.classes, proba)
                predictions.write_test(out, np.asarray(ids), self.classes, fold_mean(folds), key)
                predictions.write_pace(out, (decoding + seconds) / max(len(ids), 1), len(ids))
                bar.update(max(0, len(dirs) - ticks[job.name]))  # a retried job ticks its folds again
                seeds = cfg.model(job.name).seeds
                runs = f"{cfg.folds.k} folds" + (f" x {len(seeds)} seeds" if seeds else "")
                tqdm.write(f"{job.name}: predicted {len(ids)} test images, {runs} x "
                           f"{len(cfg.augment.tta)} view(s) ({seconds:.0f} s)")

            executor.run(jobs, done)
        self.reference(cfg.models[0])

    def reference(self, model: ModelConfig) -> None:
        """Write how the training images look to ``model``'s fold 0, unless it is up to date or
        the training images are not here (a machine with the trained models only)."""
        dirs = self.fold_dirs(model)
        model_dir = self.paths.models / model.name
        key = digest({"weights": weights_digest(dirs[:1]), "model": model.model_dump(mode="json")})
        if reference.read(model_dir, key) is not None:
            return
        try:
            files = folds_file.image_files(self.folds, tables.load_train_table(self.cfg, self.paths), self.paths.folds)
        except DataError as error:
            log.warning("no reference of the training images for %s (%s): `predict --images` will not flag "
                        "images unlike them", model.name, error)
            return
        ids = self.folds["id"].tolist()
        cache = model_cache(self.paths.cache, "train", files, ids, model, read=ImageReader.of(self.cfg.data))
        features = isolate.call(f"{WORKER}:embed", self.task(model, cache, dirs[:1], "train", ids))
        held = (self.folds["fold"] == 0).to_numpy()
        reference.write(model_dir, reference.Reference.fit(features[~held], features[held], key, seed=self.cfg.seed))


def fold_mean(folds: list[np.ndarray]) -> np.ndarray:
    """A model's probabilities: the mean of its folds' (each already a mean over TTA views).
    Under seed bagging every fold has one run per seed, so the mean of all runs is the mean over
    folds of each fold's seed mean."""
    return np.mean(np.asarray(folds, dtype=np.float64), axis=0)


def run(cfg: PipelineConfig, paths: Paths, workers: int | None = None) -> None:
    """Predict the test set with every model's trained folds; writes ``test/<m>.parquet``."""
    Predictor(cfg, paths, workers).test_set()


# --- foldstack predict --images --------------------------------------------------------------------

#: What counts as an image in a folder: every extension Pillow can open, and DICOM's.
IMAGE_EXTENSIONS = frozenset({*(ext.lower() for ext in Image.registered_extensions()), *DICOM_EXTENSIONS})


def image_files(folder: Path, read: ImageReader = ImageReader()) -> list[Path]:
    """Every image file under ``folder`` and its sub-folders (hidden ones aside), sorted; for
    array images (``read``), every ``.npy`` and ``.npz`` file.

    Raises:
        DataError: the folder is missing or holds no image.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    if read.source != "files":
        arrays = array_files(folder)
        if not arrays:
            raise DataError(f"{folder}: no .npy or .npz arrays in it or its sub-folders (data.image_source: arrays)")
        return arrays
    files = sorted(path for path in folder.rglob("*")
                   if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in path.relative_to(folder).parts))
    if not files:
        raise DataError(f"{folder}: no images in it or its sub-folders (any format Pillow reads: png, jpg, ...; DICOM)")
    return files


def images(cfg: PipelineConfig, paths: Paths, folder: Path, out: Path, skip_unreadable: bool = False,
           workers: int | None = None, explain: bool = False, table: Path | None = None) -> pd.DataFrame:
    """Predict every image under ``folder`` with every model's folds and the saved stack; write
    ``out``, a CSV: ``image`` (the path under ``folder``), ``label``, one probability column per
    class (an ordinal task: ``score``, and ``label`` the grade its saved cut points give; a
    regression: ``prediction``, clipped to ``regression.range`` as submitted, and no ``label``), ``distance`` (to the training images, see :mod:`foldstack.contracts.reference`) and
    ``unfamiliar``. Images unlike the training images are named in a warning. With ``explain``,
    each image's Grad-CAM heatmap (see :func:`explain`) goes into a folder beside ``out`` and
    its path into a ``heatmap`` column. ``table``: a CSV of the images' table columns (a row per
    image, by ``data.id_column``: the file name as the pipeline's tables name it), for the models
    that read them (``meta``).

    Raises:
        DataError: the folder is missing or empty, an image is unreadable (unless
            ``skip_unreadable``), the trained folds or the saved stack are missing or stale, or a
            model reads table columns that ``table`` lacks (or is not given). Nothing is written then.
    """
    started = time.perf_counter()
    read = ImageReader.of(cfg.data)
    files = image_files(folder, read)
    fitted = stack_output.read_model(paths.stack, tuple(model.name for model in cfg.models))
    if fitted.takes_table:
        raise DataError(f"{paths.stack / stack_output.CHOSEN}: {fitted.name} stacks table columns "
                        f"(stack.features), which a folder of images lacks; force a candidate without "
                        f"'+features' (stack.force) to predict images")
    predictor = Predictor(cfg, paths, workers)
    dirs = {model.name: predictor.fold_dirs(model) for model in cfg.models}
    sizes = list(dict.fromkeys(model.cached_size for model in cfg.models))
    files, arrays = _decode(files, sizes, skip_unreadable, read)
    meta = {model.name: _image_meta(cfg, model, files, table) for model in cfg.models}
    first = cfg.models[0]
    known = reference.read(paths.models / first.name)
    with tempfile.TemporaryDirectory(prefix="foldstack-images-") as tmp:
        for size, array in arrays.items():
            np.save(Path(tmp) / f"{size_name(size)}.npy", array)
        X = []
        for model in tqdm(cfg.models, desc="predict images", unit="model", disable=None):
            task = predictor.task(model, Path(tmp) / f"{size_name(model.cached_size)}.npy", dirs[model.name], None,
                                  meta=meta[model.name])
            X.append(fold_mean([predictor.scored(proba) for proba in isolate.call(f"{WORKER}:predict_folds", task)]))
        distance = None
        if known is not None:
            task = predictor.task(first, Path(tmp) / f"{size_name(first.cached_size)}.npy", dirs[first.name][:1], None)
            distance = known.distances(isolate.call(f"{WORKER}:embed", task))
    proba = fitted.predict_proba(np.stack(X, axis=1))
    if fitted.classes.regression and cfg.target.range is not None:
        proba = np.clip(proba, *cfg.target.range)
    frame = _table(folder, files, fitted.classes, proba, distance, known, fitted.values)
    if explain:
        frame["heatmap"] = _explain(cfg, fitted.classes, first, dirs[first.name][0], arrays[first.cached_size],
                                    frame, out, meta[first.name])
    write_csv(out, frame)
    seconds = time.perf_counter() - started
    print(f"predicted {len(files)} images in {seconds:.1f} s ({len(files) / seconds:.1f} images/s) -> {out}")
    if known is None:
        log.warning("%s: not found, so no image is checked against the training images; run the predict "
                    "stage where the training images are", paths.models / first.name / reference.NAME)
    elif frame["unfamiliar"].any():
        strange = frame.loc[frame["unfamiliar"], "image"]
        log.warning("%d of %d image(s) look unlike the training images (distance above %.3f); their "
                    "predictions are guesses: %s", len(strange), len(frame), known.threshold, shorten(strange))
    return frame


def _image_meta(cfg: PipelineConfig, model: ModelConfig, files: list[Path], table: Path | None) -> MetaRows | None:
    """The images' table columns that ``model`` reads (``meta``), from ``table`` by id; None
    for a model without ``meta``.

    Raises:
        DataError: the model reads columns and no table is given, or the table lacks a column or
            an image's row, or holds a number that is not one.
    """
    if model.meta is None:
        return None
    if table is None:
        raise DataError(f"model {model.name!r} reads table columns (meta: {', '.join(model.meta.used)}); "
                        f"pass --table CSV with a row per image ({cfg.data.id_column!r} and those columns)")
    ids = tables.image_ids(cfg.data, files)
    rows = tables.column_table(table, "table", cfg.data.id_column, model.meta, ids, f"model {model.name!r} meta")
    return MetaRows.of(rows, model.meta)


def _explain(cfg: PipelineConfig, classes: Classes, model: ModelConfig, fold_dir: Path, images: np.ndarray,
             frame: pd.DataFrame, out: Path, meta: MetaRows | None = None) -> list[str]:
    """Each image's Grad-CAM by the first model's fold 0, for the class the stack predicts
    (multilabel, or a network of finer classes: the network's own top class), as a PNG in
    ``<out stem>-explain/``; their paths relative to ``out``'s folder."""
    # Explaining needs the fold's weights and recipe, not its rows: no labels, no indices.
    network_task, n_outputs = network_classes(cfg, len(classes))
    task = FoldTask(model=model, task=network_task, metric=cfg.metric, y=np.zeros(0, dtype=np.int64),
                    n_classes=n_outputs, train_index=np.zeros(0, dtype=np.int64),
                    valid_index=np.zeros(0, dtype=np.int64), augment=cfg.augment, caches={}, fold_dir=fold_dir,
                    seed=cfg.seed)
    fine = cfg.data.train_label is not None
    names = list(FineClasses.of(cfg.data.label_map, classes).classes.names if fine else classes.names)
    # A multilabel network's own top class, or a fine one's (data.train_label); an ordinal or
    # regression network's one output.
    own_top = fine or classes.multilabel or classes.one_column
    target = None if own_top else np.array([names.index(label) for label in frame["label"]])
    result = isolate.call(f"{WORKER}:explain_images", task, images, target, meta)
    folder = out.with_name(f"{out.stem}-explain")
    pictures = [f"{Path(image).with_suffix('').as_posix().replace('/', '__')}.png" for image in frame["image"]]
    with atomic_dir(folder) as tmp:
        for image, heatmap, cls, picture, name in zip(images, result["heatmaps"], result["classes"], pictures,
                                                      frame["image"]):
            shows = "a higher grade" if classes.ordinal else "a higher value" if classes.regression else names[int(cls)]
            overlay(image, heatmap, tmp / picture, title=f"{name}: where {shows} shows")
    log.info("Grad-CAM of %d image(s) by %s fold 0 -> %s", len(pictures), model.name, folder)
    return [f"{folder.name}/{picture}" for picture in pictures]


def _decode(files: list[Path], sizes: list[int], skip_unreadable: bool,
            read: ImageReader) -> tuple[list[Path], dict[int, np.ndarray]]:
    """The readable files and their images at each size, uint8 ``(n, size, size, channels)``."""
    kept, resized, skipped = [], {size: [] for size in sizes}, []
    for path in tqdm(files, desc="decode", unit="img", leave=False, disable=None):
        try:
            image = read(path)
        except DataError as error:
            if not skip_unreadable:
                raise DataError(f"{error}; pass --skip-unreadable to predict the other images") from None
            skipped.append(str(error))
            continue
        kept.append(path)
        for size in sizes:
            resized[size].append(resize(image, size).reshape(*hw(size), read.channels))
    for message in skipped:
        log.warning("skipped: %s", message)
    if not kept:
        raise DataError(f"{files[0].parent}: none of the {len(files)} image(s) could be read")
    return kept, {size: np.stack(arrays) for size, arrays in resized.items()}


def _table(folder: Path, files: list[Path], classes: Classes, proba: np.ndarray, distance: np.ndarray | None,
           known: reference.Reference | None, thresholds: tuple[float, ...] | None = None) -> pd.DataFrame:
    """The CSV's rows; ``thresholds``: the stack's decision rule's values (multilabel's
    thresholds, an ordinal score's cut points)."""
    frame = pd.DataFrame(proba, columns=list(classes.columns))
    frame.insert(0, "image", [path.relative_to(folder).as_posix() for path in files])
    frame["distance"] = distance if distance is not None else np.nan
    frame["unfamiliar"] = distance > known.threshold if distance is not None else False
    if classes.regression:  # the value is the answer: no label to derive
        return frame
    names = np.array(classes.names)
    hard = hard_predictions(proba, classes.multilabel, None if thresholds is None else np.asarray(thresholds),
                            len(classes))
    labels = [" ".join(names[row == 1]) for row in hard] if classes.multilabel else list(names[hard])
    frame.insert(1, "label", labels)
    return frame
