"""Atomic files and folders: complete under their name or absent, whatever fails."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from foldstack.core import files


def _folder(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "content.txt").write_text(text)


def test_atomic_dir_replaces_a_folder_without_a_moment_of_absence(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "stack"
    _folder(target, "old")
    seen = []
    real_replace = os.replace

    def watched(src, dst):
        seen.append(target.exists())  # before every rename the swap makes
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watched)
    with files.atomic_dir(target) as tmp:
        (tmp / "content.txt").write_text("new")
        seen.append(target.exists())
    assert all(seen), seen
    assert (target / "content.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack"]  # nothing left beside it


def test_atomic_dir_keeps_the_old_folder_when_the_swap_fails(tmp_path: Path, monkeypatch) -> None:
    """Where the system cannot exchange two folders, the old one is moved aside; if the new one
    then cannot take its place, the old one comes back (it was deleted with the new one)."""
    target = tmp_path / "data"
    _folder(target, "old")
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def failing(src, dst):
        if Path(dst) == target and Path(src).name.endswith(".tmp"):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="Input/output error"):
        with files.atomic_dir(target) as tmp:
            (tmp / "content.txt").write_text("new")
    assert (target / "content.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_atomic_dir_creates_a_new_folder_and_drops_a_failed_one(tmp_path: Path) -> None:
    target = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with files.atomic_dir(target) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("interrupted")
    assert not list(tmp_path.iterdir())
    with files.atomic_dir(target) as tmp:
        (tmp / "content.txt").write_text("new")
    assert (target / "content.txt").read_text() == "new"


def test_atomic_writes_never_touch_the_process_umask(tmp_path: Path, monkeypatch) -> None:
    """Setting the umask to read it changes it for every thread of the process (loader threads
    creating files at that moment would get mode 0o666); the mode comes from the kernel instead."""
    umask = os.umask(0o022)
    os.umask(umask)

    def forbidden(mask):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", forbidden)
    files.write_text(tmp_path / "a.txt", "x")
    with files.atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "b.txt").write_text("y")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_reader_never_finds_the_folder_missing_while_atomic_dir_swaps_it(tmp_path: Path, monkeypatch) -> None:
    """A reader thread lists the target without pause while the block exits, swap after swap: it
    must find the folder every time. (A listing may come back short: one that opened the old folder
    just before the swap reads it while it is deleted.) This runs the path this machine takes (``renameat2``
    exchanging the two folders, checked below); a swap that removes the old folder and then
    renames the new one into place leaves a moment when a reader finds nothing."""
    target = tmp_path / "stack"
    _folder(target, "old")
    (target / "more.txt").write_text("x")
    exchanged = []
    real_exchange = files._exchange

    def recorded(a, b):
        exchanged.append(real_exchange(a, b))
        return exchanged[-1]

    monkeypatch.setattr(files, "_exchange", recorded)
    stop, problems, listings = threading.Event(), [], [0]

    def read() -> None:
        while not stop.is_set():
            try:
                os.listdir(target)
            except FileNotFoundError:
                problems.append("missing")
                continue
            if not target.exists():
                problems.append("missing")
            listings[0] += 1

    reader = threading.Thread(target=read, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the reader the GIL as often as possible
    reader.start()
    try:
        for swap in range(200):
            with files.atomic_dir(target) as tmp:
                (tmp / "more.txt").write_text("x")
                (tmp / "content.txt").write_text(str(swap))
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert exchanged and all(exchanged), "renameat2 did not exchange the folders on this machine"
    assert not problems, problems[:5]
    assert listings[0] > 200
    assert (target / "content.txt").read_text() == "199"
