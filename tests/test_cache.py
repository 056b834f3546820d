"""The image cache's formats (raw, and jpeg, png, webp packs), its keys, faults and disk budget."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_config
from foldstack.core.config import ConfigError
from foldstack.core.errors import DataError, FoldstackError
from foldstack.data import cache, tables
from foldstack.data.cache import CacheFormat, cache_file, cached_images, open_images


def _photos(folder: Path, n: int, size=(48, 64)) -> list[str]:
    """Smooth seeded colour pictures (photos compress like these, not like noise)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    files = []
    for i in range(n):
        a, b, c = rng.uniform(0.05, 0.3, 3)
        image = np.stack([128 + 100 * np.sin(a * xx + i), 128 + 100 * np.cos(b * yy), 128 + 60 * np.sin(c * (xx + yy))], -1)
        files.append(str(folder / f"{i}.png"))
        Image.fromarray(image.astype(np.uint8)).save(files[-1])
    return files


@pytest.fixture
def photos(tmp_path: Path) -> list[str]:
    (tmp_path / "img").mkdir()
    return _photos(tmp_path / "img", 20)


def test_lossless_packs_hold_raw_pixels_and_jpeg_keeps_its_quality(photos, tmp_path: Path) -> None:
    ids = [str(i) for i in range(len(photos))]
    raw = cached_images(photos, ids, 32, cache_file(tmp_path, "train", 32))
    for fmt in (CacheFormat("png"), CacheFormat("webp")):
        path = cache_file(tmp_path, "train", 32, fmt)
        packed = cached_images(photos, ids, 32, path, fmt=fmt)
        assert packed.shape == raw.shape and path.suffix == ".pack"
        np.testing.assert_array_equal(packed[np.arange(len(ids))], raw)
        np.testing.assert_array_equal(packed[3], raw[3])
        np.testing.assert_array_equal(np.asarray(packed), raw)
    jpeg = CacheFormat("jpeg", 75)
    path = cache_file(tmp_path, "train", 32, jpeg)
    assert path == tmp_path / "32-jpeg75" / "train.pack"
    assert cache_file(tmp_path, "train", 32, CacheFormat("jpeg")).parent.name == "32-jpeg90"
    packed = cached_images(photos, ids, 32, path, fmt=jpeg)
    assert cache.read_header(path)["quality"] == 75 and cache.read_header(path)["format"] == "jpeg"
    gap = np.abs(packed[:].astype(int) - raw.astype(int)).mean()
    assert 0 < gap < 6, gap  # lossy, within JPEG's loss
    stamp = path.stat().st_mtime_ns
    again = cached_images(photos, ids, 32, path, fmt=jpeg)  # built once
    assert path.stat().st_mtime_ns == stamp and np.array_equal(again[:], packed[:])
    assert isinstance(open_images(path), cache.EncodedImages) and isinstance(open_images(cache_file(tmp_path, "train", 32)), np.ndarray)


def test_a_corrupt_image_mid_build_is_named_and_leaves_no_pack(photos, tmp_path: Path) -> None:
    Path(photos[12]).write_bytes(b"not a picture")
    path = cache_file(tmp_path / "cache", "train", 32, CacheFormat("jpeg"))
    with pytest.raises(DataError, match=r"12.png: cannot read image"):
        cached_images(photos, [str(i) for i in range(len(photos))], 32, path, fmt=CacheFormat("jpeg"))
    assert list(path.parent.iterdir()) == []


def test_an_interrupted_build_restarts_and_never_pairs_old_ids_with_new_images(photos, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = CacheFormat("png")
    path = cache_file(tmp_path, "train", 24, fmt)
    first, second = photos[:8], photos[8:]
    old = cached_images(first, [f"a{i}" for i in range(8)], 24, path, fmt=fmt)[:]
    leftover = path.with_name(f".{path.name}.dead0123.tmp")
    leftover.write_bytes(b"x" * 1000)  # a build killed with SIGKILL leaves its temporary file

    calls = []

    def killed(image, size):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(image, size)

    real = cache.resize
    monkeypatch.setattr(cache, "resize", killed)
    with pytest.raises(KeyboardInterrupt):
        cached_images(second, [f"b{i}" for i in range(12)], 24, path, fmt=fmt)
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # the old pack, whole; no leftovers
    np.testing.assert_array_equal(cached_images(first, [f"a{i}" for i in range(8)], 24, path, fmt=fmt)[:], old)
    new = cached_images(second, [f"b{i}" for i in range(12)], 24, path, fmt=fmt)
    raw = cached_images(second, [f"b{i}" for i in range(12)], 24, cache_file(tmp_path, "train", 24))
    assert len(new) == 12 and np.array_equal(new[:], raw)


@pytest.mark.parametrize("fmt", [CacheFormat(), CacheFormat("jpeg")], ids=["raw", "jpeg"])
def test_a_build_resizes_on_several_threads_and_writes_the_images_in_order(photos, tmp_path: Path, fmt: CacheFormat,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Images are read, resized and encoded on BUILD_THREADS threads, CHUNK at a time (a chunk
    shorter than the files, so several chunks), and land in their files' order: the same cache
    as one thread builds."""
    ids = [str(i) for i in range(len(photos))]
    one = cache_file(tmp_path / "one", "train", 24, fmt)
    monkeypatch.setattr(cache, "BUILD_THREADS", 1)
    alone = cached_images(photos, ids, 24, one, fmt=fmt)[:]
    threads = set()

    def resize(image, size):
        threads.add(threading.current_thread().name)
        return real(image, size)

    real = cache.resize
    monkeypatch.setattr(cache, "resize", resize)
    monkeypatch.setattr(cache, "BUILD_THREADS", 3)
    monkeypatch.setattr(cache, "CHUNK", 7)
    several = cached_images(photos, ids, 24, cache_file(tmp_path / "several", "train", 24, fmt), fmt=fmt)
    assert len(threads) > 1 and all(name.startswith("cache-build") for name in threads), threads
    np.testing.assert_array_equal(several[:], alone)


def _rss_file_kb() -> int:
    """This process's resident file-backed memory (``RssFile`` of /proc/self/status), in kB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("RssFile:"))
    return int(line.split()[1])


def test_reading_a_whole_pack_leaves_the_process_resident_memory_flat(tmp_path: Path) -> None:
    """An epoch over a pack must not grow the train stage's RSS by the pack's size (issue 23's
    memory at N and 4N): each image's bytes are read, not mapped. Pickled, a pack reopens its file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "noise"
    folder.mkdir()
    files = []
    for i in range(48):  # noise does not compress: ~190 kB a PNG, a ~9 MB pack
        files.append(str(folder / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(files[-1], compress_level=1)
    path = cache_file(tmp_path, "train", 256, CacheFormat("png"))
    cached_images(files, [str(i) for i in range(len(files))], 256, path, fmt=CacheFormat("png"))
    images = open_images(path)
    first = images[0]  # OpenCV's libraries are loaded (mapped) by the first decode
    before = _rss_file_kb()
    for row in range(len(images)):
        images[row]
    grown = _rss_file_kb() - before
    assert path.stat().st_size > 8e6 and grown < path.stat().st_size / 1024 / 4, (grown, path.stat().st_size)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(images))[0], first)


def test_the_disk_budget_names_both_figures_and_a_format_that_fits(photos, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [str(i) for i in range(len(photos))]
    raw_bytes = len(photos) * 64 * 64 * 3 + cache.HEADER_BYTES
    free = raw_bytes // 2 - cache.HEADER_BYTES // 2 + 20000  # room for a jpeg pack, not for raw
    monkeypatch.setattr(cache, "free_bytes", lambda folder: free)
    target = cache_file(tmp_path / "cache", "train", 64)
    with pytest.raises(FoldstackError) as raised:
        cached_images(photos, ids, 64, target)
    message = str(raised.value)
    assert message.startswith(f"{target.parent}: the image cache (raw) needs {raw_bytes} bytes")
    assert f"{free} bytes" in message and "cache: {format: jpeg, quality: 90} would need ~" in message
    assert "\n" not in message and list(target.parent.iterdir()) == []

    monkeypatch.setattr(cache, "free_bytes", lambda folder: 3000)  # not even an encoded pack fits
    fmt = CacheFormat("png")
    target = cache_file(tmp_path / "cache", "train", 64, fmt)
    with pytest.raises(FoldstackError, match=r"the image cache \(png\) needs \d+ bytes .*, 3000 bytes .* are free; free"):
        cached_images(photos, ids, 64, target, fmt=fmt)
    assert not target.parent.exists() or list(target.parent.iterdir()) == []

    monkeypatch.setattr(cache, "free_bytes", lambda folder: free)  # the jpeg pack fits: built
    jpeg = CacheFormat("jpeg")
    assert len(cached_images(photos, ids, 64, cache_file(tmp_path / "cache", "train", 64, jpeg), fmt=jpeg)) == 20


def test_the_cache_key_is_per_pipeline_and_per_model() -> None:
    cfg = make_config(cache={"format": "jpeg", "quality": 80})
    assert cfg.models[0].cache.format == "jpeg" and cfg.models[0].cache.quality == 80
    assert cfg.model_dump(mode="json")["cache"] == {"format": "jpeg", "quality": 80}
    plain = make_config()
    assert "cache" not in plain.model_dump(mode="json") and "cache" not in plain.models[0].model_dump(mode="json")
    own = make_config(cache={"format": "jpeg"}, models=[{"name": "m", "backbone": "mobilenet_v2", "weights": "none",
                                                        "image_size": 32, "cache": {"format": "png"}}])
    assert own.models[0].cache.format == "png"
    with pytest.raises(ConfigError, match=r"cache.format = 'tiff': Input should be 'raw', 'jpeg', 'png' or 'webp'"):
        make_config(cache={"format": "tiff"})
    with pytest.raises(ConfigError, match=r"quality is for format jpeg or webp, not 'png'"):
        make_config(cache={"format": "png", "quality": 90})


def test_encoded_batches_equal_raw_ones(tiny_digits, tmp_path: Path) -> None:
    """The loader reads a pack as it reads the memory map: png's batches are raw's."""
    from foldstack.training.loader import ImageBatches

    cfg, paths = tiny_digits
    train = tables.load_train_table(cfg, paths)
    files, ids = train["path"].tolist()[:40], train["id"].tolist()[:40]
    raw = cached_images(files, ids, 16, cache_file(tmp_path, "train", 16))
    png = cached_images(files, ids, 16, cache_file(tmp_path, "train", 16, CacheFormat("png")), fmt=CacheFormat("png"))
    targets = np.arange(40) % 3
    one = ImageBatches(raw, np.arange(40), targets, batch_size=8, shuffle=True, seed=3)
    two = ImageBatches(png, np.arange(40), targets, batch_size=8, shuffle=True, seed=3)
    for batch in range(len(one)):
        np.testing.assert_array_equal(one[batch][0], two[batch][0])
