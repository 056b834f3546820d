"""A Kaggle kernel's disk and clock: caches and unpacked data in scratch, not in the 20 GB
/kaggle/working; a cache that would not fit stops before writing; the kernel's run-time projection."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foldstack.core.errors import FoldstackError
from foldstack.core.paths import Paths, scratch_root
from foldstack.data import cache
from foldstack.stages import kernel

Usage = namedtuple("Usage", "total used free")


def test_a_kernel_puts_caches_and_data_in_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("FOLDSTACK_SCRATCH", str(tmp_path / "scratch"))
    paths = Paths.for_pipeline("tiny", tmp_path / "working")
    assert paths.cache == tmp_path / "scratch" / "cache" / "tiny"
    assert paths.data == tmp_path / "scratch" / "data" / "tiny"
    assert paths.artifacts == tmp_path / "working" / "artifacts" / "tiny"  # the models stay with the notebook's output
    monkeypatch.delenv("FOLDSTACK_SCRATCH")
    assert scratch_root() == (Path("/kaggle/temp") if Path("/kaggle/temp").is_dir() else Path("/tmp/foldstack"))

    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")  # a workstation: everything under the root, as before
    paths = Paths.for_pipeline("tiny", tmp_path / "working")
    assert paths.cache == tmp_path / "working" / "artifacts" / "tiny" / "cache"
    assert paths.data == tmp_path / "working" / "data" / "tiny"


def test_a_cache_that_would_not_fit_stops_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(files[-1])
    target = tmp_path / "cache" / "32" / "test.npy"
    needed = 3 * 32 * 32 * 3 + cache.HEADER_BYTES
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: Usage(10**12, 10**12 - 5000, 5000))
    with pytest.raises(FoldstackError) as raised:
        cache.cached_images(files, ["a", "b", "c"], 32, target)
    message = str(raised.value)  # three flat images: a JPEG pack fits, and is suggested
    assert message.startswith(f"{target.parent}: the image cache (raw) needs {needed} bytes (1.0 MiB), 5000 bytes "
                              "(4.9 KiB) are free; cache: {format: jpeg, quality: 90} would need ~")
    assert message.endswith("KiB; or free some space, or move scratch with FOLDSTACK_SCRATCH in a kernel")
    assert list(target.parent.iterdir()) == []  # nothing written, not even a temporary file

    monkeypatch.setattr(shutil, "disk_usage", lambda folder: Usage(10**12, 0, needed))
    assert cache.cached_images(files, ["a", "b", "c"], 32, target).shape == (3, 32, 32, 3)


def test_kernel_projects_its_run_time_and_warns_past_the_limit() -> None:
    record = {"seconds_per_image": {"cnn": 0.5, "lite0": 1.5}}
    line = kernel.projection(record, 15000, 9.0)
    assert line == ("kernel: projected predict time 8.33 h (30000 s) for 15000 test images (cnn 0.5000 s, "
                    "lite0 1.5000 s per image, as measured by `predict` on the training machine); limit 9 h")
    warned = kernel.projection(record, 15000, 8.0).splitlines()
    assert warned[1] == ("kernel: warning: the projection passes the 8 h limit; "
                         "use fewer models, folds or TTA views")
    unmeasured = kernel.projection({"seconds_per_image": {"cnn": 0.5, "old": None}}, 10, 9.0)
    assert unmeasured.endswith("; not measured: old (run `make predict` before `make bundle`)")
