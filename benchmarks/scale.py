"""Competition scale (issue 23): N seeded JPEG photos of 600x800 in a Kaggle layout, then per
cache format at 512 px: the build's seconds, images/s and bytes; the loader's images/s with the
default augmentation (none) and with cassava's, on 2 and 4 worker threads; training images/s
of a small backbone at 128 px from each format's cache; the train stage's peak RSS at N and 4N; ``predict`` seconds for N test
images. ``python -m benchmarks.scale --n 20000`` is the issue's size; ``make bench`` runs a small N.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")  # the cache builds' bars would hide the table

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import REPO, Row, machine, table  # noqa: E402
from foldstack.core.files import atomic_path  # noqa: E402

SIZE = 512
TRAIN_SIZE = 128
#: The images ``train_rate`` trains on (two epochs), and the 128 px caches it reads hold.
TRAIN_RATE_IMAGES = 2048
FORMATS = ({"format": "raw"}, {"format": "jpeg", "quality": 90}, {"format": "png"}, {"format": "webp", "quality": 90})
#: Competitions at their winners' sizes: (name, train + test images, size).
COMPETITIONS = (("cassava", 21397 + 15000, 512), ("SIIM-ISIC", 33126 + 10982, 768), ("RANZCR", 30083 + 14000, 1024),
                ("iMet", 142119 + 7443, 320))


#: Photos one worker process makes at a time (``photos``).
PHOTO_CHUNK = 500
#: The grain fields a photo draws its grain from (each rolled by its own offsets): drawing 1.4
#: million normals per photo took 14 ms of the photo's 20 here.
GRAIN_FIELDS = 8


def photos(folder: Path, count: int, seed: int, reuse: Path | None = None) -> list[Path]:
    """``count`` 600x800 JPEGs (quality 90) of smooth colour fields with fine grain: ~100-200 kB,
    as a phone photo of a leaf is; made by worker processes, one per core, :data:`PHOTO_CHUNK`
    at a time. ``reuse``: a folder of M photos that photo ``i`` is hard-linked from (its photo
    ``i mod M``) instead: the 4N competition of the memory row holds the N photos four times
    over, under new names (the train stage's memory depends on how many images, not on what
    they show)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = [folder / f"{i:06d}.jpg" for i in range(count)]
    reused = sorted(reuse.glob("*.jpg")) if reuse is not None else []
    missing = []
    for i, path in enumerate(out):
        if path.exists():
            continue
        if reused:
            os.link(reused[i % len(reused)], path)
        else:
            missing.append(i)
    chunks = [(folder, seed, missing[at:at + PHOTO_CHUNK]) for at in range(0, len(missing), PHOTO_CHUNK)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_make_photos, chunks))
    return out


def _make_photos(chunk: tuple[Path, int, list[int]]) -> None:
    folder, seed, numbers = chunk
    fields = np.random.default_rng([seed, 1 << 30]).normal(0, 7, (GRAIN_FIELDS, 600, 800, 3)).astype(np.float32)
    for i in numbers:
        rng = np.random.default_rng([seed, i])
        low = Image.fromarray(rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)).resize((800, 600), Image.BICUBIC)
        dy, dx = rng.integers(0, 600), rng.integers(0, 800)
        grain = np.roll(fields[rng.integers(0, GRAIN_FIELDS)], (dy, dx), axis=(0, 1))
        with atomic_path(folder / f"{i:06d}.jpg") as tmp:
            Image.fromarray(np.clip(np.asarray(low) + grain, 0, 255).astype(np.uint8)).save(tmp, format="JPEG",
                                                                                             quality=90)


def competition(root: Path, n: int, seed: int = 0, test: bool = True, reuse: Path | None = None) -> Path:
    """A Kaggle layout (cassava's): train.csv (image_id, label), train_images/, test_images/,
    sample_submission.csv; 5 classes. ``reuse``: a competition whose photos are hard-linked
    (``photos``) instead of made."""
    train = photos(root / "train_images", n, seed, reuse and reuse / "train_images")
    test = photos(root / "test_images", n if test else 1, seed + 1, reuse and reuse / "test_images")
    labels = np.random.default_rng(seed).integers(0, 5, n)
    (root / "train.csv").write_text("image_id,label\n" + "".join(f"{p.stem},{c}\n" for p, c in zip(train, labels)))
    (root / "sample_submission.csv").write_text("image_id,label\n" + "".join(f"{p.stem},0\n" for p in test))
    return root


def pipeline(data: Path, name: str, cache: dict, epochs: int = 1) -> dict:
    return {"name": name, "task": "multiclass", "metric": "accuracy", "seed": 0,
            "data": {"source": {"type": "local", "path": str(data)}, "layout": "csv", "train_csv": "train.csv",
                     "id_column": "image_id", "label_column": "label", "train_dir": "train_images",
                     "test_dir": "test_images", "extension": ".jpg", "sample_submission": "sample_submission.csv"},
            "folds": {"k": 2, "seed": 0}, "cache": cache,
            "models": [{"name": "cnn", "backbone": "small_cnn", "weights": "none", "image_size": TRAIN_SIZE,
                        "regime": "scratch", "epochs": epochs, "batch_size": 32}]}


def loader_rate(images, augment, workers: int, batches: int = 24, batch_size: int = 32) -> float:
    """Images/s of ``ImageBatches`` with ``augment``'s train transforms, ``workers`` threads
    building batches at once (as Keras's ``PyDataset`` workers do)."""
    from foldstack.training.augment import compose
    from foldstack.training.loader import ImageBatches

    rows = np.arange(min(len(images), batches * batch_size))
    data = ImageBatches(images, rows, np.zeros(len(images), int), transform=compose(augment.train),
                        batch_size=batch_size, shuffle=True, workers=workers)
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        n = sum(len(b[0]) for b in pool.map(data.__getitem__, range(len(data))))
    return n / (time.perf_counter() - started)


def train_rate(images, epochs: int = 2) -> float:
    """Training images/s of small_cnn at 128 px on ``images`` (the second epoch: the first traces);
    ``run`` gives it the first :data:`TRAIN_RATE_IMAGES` images: a rate, which N does not change."""
    import keras

    from foldstack import backbones
    from foldstack.training.loader import ImageBatches

    keras.utils.set_random_seed(0)
    backbone = backbones.create("small_cnn", weights="none", include_top=False, input_shape=(TRAIN_SIZE, TRAIN_SIZE, 3))
    inputs = keras.Input((TRAIN_SIZE, TRAIN_SIZE, 3))
    network = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(backbone(inputs))))
    network.compile("adam", "sparse_categorical_crossentropy")
    data = ImageBatches(images, np.arange(len(images)), np.zeros(len(images), int), batch_size=32, shuffle=True,
                        workers=2)
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            times.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            times[-1] = time.perf_counter() - times[-1]

    network.fit(data, epochs=epochs, verbose=0, callbacks=[Clock()])
    return len(images) // 32 * 32 / times[-1]


def stage(cfg_file: Path, root: Path, name: str) -> float:
    """Seconds of ``foldstack <name>`` in its own process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "foldstack.cli", name, "--pipeline", str(cfg_file), "--root", str(root)],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return time.perf_counter() - started


def peak_mb(root: Path, name: str) -> float:
    """The largest fold process's peak RSS (``VmHWM``, each fold's ``done.json``)."""
    return max(json.loads(p.read_text())["peak_mb"] for p in (root / "artifacts" / name / "models").rglob("done.json"))


def run(folder: Path, n: int) -> tuple[list[Row], str]:
    from foldstack.core.config import AugmentConfig
    from foldstack.pipeline import load_pipeline
    from foldstack.data import cache
    from foldstack.data.cache import CacheFormat, cache_file, cached_images

    rows, sizes, build_seconds = Rows(), {}, {}
    started = time.perf_counter()
    data = competition(folder / "comp", n)
    files = sorted(str(p) for p in (data / "train_images").glob("*.jpg"))
    mean_kb = np.mean([os.path.getsize(f) for f in files]) / 1e3
    rows.append(Row("scale", f"{n} + {n} photos 600x800 JPEG (mean {mean_kb:.0f} kB)",
                    f"{time.perf_counter() - started:.0f} s to make ({os.cpu_count()} processes)"))
    ids = [Path(f).stem for f in files]
    # The default augmentation is none (the loader gathers rows); cassava's pipeline's is what a
    # competition trains with (flips, an affine warp, colour jitter).
    augments = {"default augment (none)": AugmentConfig(),
                "cassava's augment": load_pipeline(REPO / "pipelines" / "cassava-leaf-disease-classification.yaml").augment}
    raw_rate = {}
    for spec in FORMATS:
        fmt = CacheFormat(spec["format"], spec.get("quality"))
        path = cache_file(folder / "cache", "train", SIZE, fmt)
        seconds = time.perf_counter()
        images = cached_images(files, ids, SIZE, path, fmt=fmt)
        seconds = time.perf_counter() - seconds
        sizes[fmt.name] = path.stat().st_size / n
        build_seconds[fmt.name] = seconds / n
        rows.append(Row("scale", f"{fmt.name} cache at {SIZE}px: build, bytes",
                        f"{seconds:.1f} s, {n / seconds:.0f} img/s on {cache.BUILD_THREADS} threads, "
                        f"{path.stat().st_size / 2**20:.0f} MiB ({sizes[fmt.name] / 1e3:.0f} kB/img)"))
        for (named, transforms), workers in itertools.product(augments.items(), (2, 4)):
            rate = loader_rate(images, transforms, workers)
            if fmt.format == "raw":
                raw_rate[named, workers] = rate
                rows.append(Row("scale", f"raw loader {SIZE}px, {named}, {workers} threads", f"{rate:.0f} img/s"))
            else:
                ratio = rate / raw_rate[named, workers]
                rows.append(Row("scale", f"{fmt.name} loader {SIZE}px / raw, {named}, {workers} threads",
                                f"{rate:.0f} vs {raw_rate[named, workers]:.0f} img/s", ratio, ">= 0.5", ratio >= 0.5))
        del images
        path.unlink()  # measured: its disk goes to the next format's (raw at N = 20,000: 15.7 GB)
        small = cache_file(folder / "cache", "train", TRAIN_SIZE, fmt)
        some = slice(0, TRAIN_RATE_IMAGES)
        rate = train_rate(cached_images(files[some], ids[some], TRAIN_SIZE, small, fmt=fmt))
        rows.append(Row("scale", f"small_cnn {TRAIN_SIZE}px training from {fmt.name} "
                                 f"({min(n, TRAIN_RATE_IMAGES)} images)", f"{rate:.0f} img/s"))
    cassava = sizes["jpeg90"] * 21397
    rows.append(Row("scale", "jpeg90 cache of cassava (21,397) at 512px, from kB/img", f"{cassava / 1e9:.2f} GB",
                    None, "<= 3 GB", cassava <= 3e9))
    # The train stage's peak memory at N and 4N (a jpeg cache at 128 px, small_cnn, 2 folds, 1 epoch).
    peaks = {}
    for count in (n, 4 * n):
        data = folder / "comp" if count == n else competition(folder / "comp4n", count, test=False,
                                                              reuse=folder / "comp")
        root = folder / f"root{count}"
        cfg_file = folder / f"scale{count}.yaml"
        cfg_file.write_text(yaml.safe_dump(pipeline(data, f"scale{count}", {"format": "jpeg"})))
        for name in ("download", "folds"):
            stage(cfg_file, root, name)
        seconds = stage(cfg_file, root, "train")
        peaks[count] = peak_mb(root, f"scale{count}")
        rows.append(Row("scale", f"train stage, {count} images (jpeg cache {TRAIN_SIZE}px, 2 folds x 1 epoch)",
                        f"{seconds:.0f} s, fold peak RSS {peaks[count]:.0f} MB"))
        if count == n:
            rows.append(Row("scale", f"predict stage, {n} test images (cache build included)",
                            f"{stage(cfg_file, root, 'predict'):.0f} s"))
    growth = peaks[4 * n] / peaks[n]
    rows.append(Row("scale", f"train peak RSS at {4 * n} / at {n}", f"{peaks[4 * n]:.0f} vs {peaks[n]:.0f} MB", growth,
                    "<= 1.10", growth <= 1.10))
    return rows, extrapolate(sizes, build_seconds, cache.BUILD_THREADS)


class Rows(list):
    """The table's rows, each printed as it comes (a run of hours shows its progress, and an
    interrupted one what it measured)."""

    def append(self, row: Row) -> None:
        super().append(row)
        print(f"{row.case}: {row.figure}" + (f" (ratio {row.ratio:.2f}, target {row.target})" if row.ratio else ""),
              flush=True)


def extrapolate(per_image: dict[str, float], seconds: dict[str, float], threads: int) -> str:
    """Each competition's cache per format at its winners' size: bytes, and hours to build on 4
    cores. Both scaled from the 512 px figures by pixels (bytes do; a build's resize and encode
    do roughly, its decode of the source photo does not), the hours from ``threads`` to 4."""
    lines = ["| competition | images | size | " + " | ".join(per_image) + " |", "|---|---|---|" + "---|" * len(per_image)]
    for name, count, size in COMPETITIONS:
        scale = (size / SIZE) ** 2
        cells = [f"{count * per_image[f] * scale / 1e9:.1f} GB, {count * seconds[f] * scale * threads / 4 / 3600:.2f} h"
                 for f in per_image]
        lines.append(f"| {name} | {count:,} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--n", type=int, default=100, help="photos per split (the issue's size: 20000)")
    parser.add_argument("--keep", type=Path, help="a folder to build in and keep (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="foldstack-scale-") as tmp:
        rows, text = run(args.keep or Path(tmp), args.n)
    print(f"\n{machine()}\n\n{table(rows)}\n\n{text}")


if __name__ == "__main__":
    main()
