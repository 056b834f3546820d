"""Archives beyond zip inside a competition's files (``data/archives.py``): .7z, .tar, .tar.gz/.tgz,
.gz of one table, archives inside archives, a table packed in its own archive; a corrupt or
password-protected one is one line; a folder holding an archive and its members already unpacked
counts as unpacked when the bytes agree. Each through the download stage, on tiny files made here."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import py7zr
import pytest
from conftest import make_config
from test_layouts import _zip

from foldstack.core.errors import DataError
from foldstack.core.paths import Paths, holds_archives
from foldstack.data import archives, sources
from foldstack.stages import check, download

TABLE = b"id,label\na,x\nb,y\n"


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as packed:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            packed.addfile(info, io.BytesIO(data))
    return path


def _seven(path: Path, members: dict[str, bytes], password: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with py7zr.SevenZipFile(path, "w", password=password) as packed:
        for name, data in members.items():
            packed.writestr(data, name)
    return path


def _download(tmp_path: Path, source: Path) -> Paths:
    cfg = make_config(data={"source": {"type": "local", "path": str(source)}})
    paths = Paths.for_pipeline("tiny", tmp_path / "root")
    download.run(cfg, paths)
    return paths


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != sources.MARKER}


def test_every_kind_of_archive_is_unpacked_once(tmp_path: Path) -> None:
    source = tmp_path / "competition"
    _seven(source / "train.7z", {"train/a.png": b"A", "train/b.png": b"B"})          # one top folder: beside
    _tar(source / "test.tar.gz", {"c.png": b"C"})                                      # flat: into test/
    _tar(source / "extra.tgz", {"extra/d.png": b"D"})
    _tar(source / "more.tar", {"e.png": b"E"}, mode="w")
    (source / "sample_submission.csv.gz").parent.mkdir(parents=True, exist_ok=True)
    (source / "sample_submission.csv.gz").write_bytes(gzip.compress(TABLE))           # .gz of one table
    _seven(source / "train_labels.csv.7z", {"train_labels.csv": TABLE})               # a table in its own archive
    inner = _seven(tmp_path / "inner.7z", {"notes.txt": b"hello"})
    _tar(source / "nested.tar.gz", {"nested/inner.7z": inner.read_bytes()})           # a 7z inside a tar.gz
    _zip(source / "zipped.zip", {"zipped/f.png": b"F"})
    assert holds_archives(source)

    paths = _download(tmp_path, source)
    assert _files(paths.data) == {
        "train/a.png": b"A", "train/b.png": b"B", "test/c.png": b"C", "extra/d.png": b"D", "more/e.png": b"E",
        "sample_submission.csv": TABLE, "train_labels.csv": TABLE, "nested/inner/notes.txt": b"hello",
        "zipped/f.png": b"F"}
    assert not any(name.startswith(".") for name in _files(paths.data))  # no scratch folder left
    assert (source / "train.7z").is_file()  # the source stays as shipped


def test_members_already_there_with_the_same_bytes_count_as_unpacked(tmp_path: Path) -> None:
    """mle-bench ships dogs-vs-cats as train.zip beside train/ already unpacked: no clash."""
    source = tmp_path / "competition"
    _zip(source / "train.zip", {"train/1.jpg": b"one", "train/2.jpg": b"two"})
    (source / "train").mkdir()
    (source / "train" / "1.jpg").write_bytes(b"one")  # unpacked by hand, partly
    paths = _download(tmp_path, source)
    assert _files(paths.data) == {"train/1.jpg": b"one", "train/2.jpg": b"two"}


def test_a_member_with_other_bytes_is_one_line_naming_the_file(tmp_path: Path) -> None:
    source = tmp_path / "competition"
    _tar(source / "train.tar.gz", {"train/1.jpg": b"one", "train/2.jpg": b"two"})
    (source / "train").mkdir()
    (source / "train" / "1.jpg").write_bytes(b"one")
    (source / "train" / "2.jpg").write_bytes(b"TWO")
    cfg = make_config(data={"source": {"type": "local", "path": str(source)}})
    paths = Paths.for_pipeline("tiny", tmp_path / "root")
    with pytest.raises(DataError) as error:
        download.run(cfg, paths)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{paths.data / 'train.tar.gz'}: member 'train/2.jpg' would overwrite "
                              f"{paths.data / 'train' / '2.jpg'}, already there with other bytes")
    assert not paths.data.exists()


@pytest.mark.parametrize("name, write, reason", [
    ("secret.7z", lambda p: _seven(p, {"a.png": b"A"}, password="pw"), "cannot unpack: it needs a password"),
    ("broken.7z", lambda p: p.write_bytes(b"7z\xbc\xaf\x27\x1c broken"), "cannot unpack: "),
    ("broken.tar.gz", lambda p: p.write_bytes(gzip.compress(b"not a tar")[:-6]), "cannot unpack: "),
    ("broken.csv.gz", lambda p: p.write_bytes(b"\x1f\x8b not gzip"), "cannot unpack: "),
    ("secret.zip", lambda p: _encrypted_zip(p), "cannot unpack: it needs a password"),
])
def test_corrupt_or_locked_archive_is_one_line_in_download_and_check(name, write, reason, tmp_path: Path) -> None:
    source = tmp_path / "competition"
    source.mkdir()
    write(source / name)
    cfg = make_config(data={"source": {"type": "local", "path": str(source)}})
    paths = Paths.for_pipeline("tiny", tmp_path / "root")
    with pytest.raises(DataError) as error:
        download.run(cfg, paths)
    assert str(error.value).startswith(f"{paths.data / name}: {reason}") and "\n" not in str(error.value)
    # Downloaded without unpacking, then checked with it on: the archive is named with the same reason.
    download.run(make_config(data={**cfg.data.model_dump(mode="json"), "unpack": False}), paths)
    problems = [p for p in check.run(cfg, paths).problems if p.startswith(str(paths.data / name))]
    assert len(problems) == 1 and problems[0].startswith(f"{paths.data / name}: {reason}")


def _encrypted_zip(path: Path) -> None:
    """A zip whose member is flagged as encrypted (the standard library writes no encryption: the
    flag is set in its local and central headers)."""
    data = bytearray(_zip(path, {"a.png": b"A"}).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + offset
        data[at] |= 0x1
    path.write_bytes(bytes(data))


def test_stem_strips_the_whole_archive_ending() -> None:
    assert [archives.stem(Path(n)) for n in ("train.tar.gz", "x.TGZ", "s.csv.zip", "t.csv.gz", "a.7z")] == [
        "train", "x", "s.csv", "t.csv", "a"]
