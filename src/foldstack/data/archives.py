"""The archives inside a competition's files, unpacked where they lie: ``.zip``, ``.7z`` (py7zr),
``.tar`` (also ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``) and ``.gz`` of one file.

Every archive is unpacked into a hidden scratch folder beside it, then its files are moved into
place: so a member that would leave its folder, a corrupt archive or one that needs a password
stops with one line before anything lands, and a member already there (an archive unpacked by
hand, or as mle-bench prepares some competitions) counts as unpacked when it holds the same
bytes. The caller makes the whole unpacking atomic (``sources.complete`` runs in a folder that
takes its place only once complete).
"""

from __future__ import annotations

import filecmp
import gzip
import lzma
import logging
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from foldstack.core.errors import DataError, one_line
from foldstack.core.paths import archive_suffix

log = logging.getLogger(__name__)

#: Rounds of unpacking (a zip inside a zip inside ...) before an archive is taken for a zip bomb.
MAX_NESTING = 8
#: Folders that archivers on macOS add and that are no data.
NOT_DATA = ("__MACOSX",)


class _Refused(Exception):
    """Why an archive cannot be unpacked, for the one line that names it."""


def find(folder: Path) -> list[Path]:
    """Every archive under ``folder`` (sub-folders too), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and archive_suffix(p.name)
                  and not any(part.endswith(_SCRATCH) for part in p.relative_to(folder).parts))


def stem(archive: Path) -> str:
    """The archive's name without its archive ending: ``train`` of ``train.tar.gz``,
    ``sample_submission.csv`` of ``sample_submission.csv.zip``."""
    suffix = archive_suffix(archive.name) or ""
    return archive.name[:len(archive.name) - len(suffix)]


def unpack_all(folder: Path, shown: Path | None = None) -> list[str]:
    """Unpack every archive under ``folder``, archives found inside archives too, each once; an
    archive goes once it is unpacked. Returns the archives unpacked (relative POSIX paths).

    ``shown``: the folder's final name, for messages.

    Raises:
        DataError: see :func:`unpack`; or archives nested deeper than :data:`MAX_NESTING`.
    """
    done: list[str] = []
    for _ in range(MAX_NESTING):
        archives = find(folder)
        if not archives:
            return done
        for archive in archives:
            name = archive.relative_to(folder).as_posix()
            log.info("unpacking %s", name)
            unpack(archive, (shown or folder) / name)
            archive.unlink()
            done.append(name)
    raise DataError(f"{shown or folder}: archives nested more than {MAX_NESTING} deep; refused as a possible zip bomb")


def unpack(archive: Path, shown: Path | None = None) -> Path:
    """Unpack one archive beside itself; returns the folder its files went into.

    An archive whose files all sit under one top folder (``train.zip`` holding ``train/...``),
    or that holds one file named by its stem (``train.csv.zip``, ``train.csv.gz``), lands
    beside itself; one with flat files, in a folder named by its stem (``test.7z`` -> ``test/``).

    Raises:
        DataError: one line naming the archive as under ``shown``: it is corrupt or needs a
            password, a member would land outside its folder, or a member would replace a file
            already there that holds other bytes (the first such file named).
    """
    shown = shown or archive
    scratch = archive.parent / f".{archive.name}{_SCRATCH}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        try:
            _EXTRACT[archive_suffix(archive.name)](archive, scratch)
        except _Refused as why:
            raise DataError(f"{shown}: {why}") from None
        except _UNREADABLE as error:
            raise DataError(f"{shown}: cannot unpack: {one_line(str(error)) or type(error).__name__}") from None
        for name in NOT_DATA:
            shutil.rmtree(scratch / name, ignore_errors=True)
        names = [p.relative_to(scratch).as_posix() for p in sorted(scratch.rglob("*")) if p.is_file()]
        beside = _one_top_folder(names) or names == [stem(archive)]
        target = archive.parent if beside else archive.parent / stem(archive)
        _place(scratch, names, target, shown.parent / target.relative_to(archive.parent), shown)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def archive_problem(archive: Path) -> str:
    """Why an archive is still in a downloaded folder (``check``): it was never unpacked, or it
    cannot be."""
    try:
        _TEST[archive_suffix(archive.name)](archive)
    except _Refused as why:
        return f"{archive}: {why}"
    except _UNREADABLE as error:
        return f"{archive}: cannot unpack: {one_line(str(error)) or type(error).__name__}"
    return f"{archive}: archive not unpacked (data.unpack is on); run the download stage with --force"


# --- placing what was unpacked ---------------------------------------------------------------------

_SCRATCH = ".unpacking"


def _place(scratch: Path, names: list[str], target: Path, shown_target: Path, shown: Path) -> None:
    """Move the unpacked files into ``target``; a file already there with the same bytes stays
    (that member was unpacked before), one with other bytes stops everything first."""
    there = [name for name in names if (target / name).exists()]
    for name in there:
        if not (target / name).is_file() or not filecmp.cmp(scratch / name, target / name, shallow=False):
            raise DataError(f"{shown}: member {name!r} would overwrite {shown_target / name}, already there "
                            "with other bytes; move one of them away")
    if there:
        log.info("%s: %d of its %d files are already there, unpacked with the same bytes", shown.name,
                 len(there), len(names))
    for name in names:
        if name not in there:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / name, target / name)


def _check_members(names: list[str]) -> None:
    """Refuse a member whose path would leave the folder it is unpacked into (zip slip)."""
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise _Refused(f"member {name!r} would land outside the folder it unpacks into; refused")


def _one_top_folder(names: list[str]) -> bool:
    """Whether every file sits under one folder (``train/a.jpg``, ``train/b.jpg``)."""
    tops = {name.split("/", 1)[0] for name in names}
    return len(tops) == 1 and all("/" in name for name in names)


# --- one reader per kind -----------------------------------------------------------------------------

_NEEDS_PASSWORD = "cannot unpack: it needs a password"


def _zip(archive: Path, scratch: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        _check_zip(zipped)
        zipped.extractall(scratch)


def _check_zip(zipped: zipfile.ZipFile) -> None:
    members = zipped.infolist()
    if any(member.flag_bits & 0x1 for member in members):
        raise _Refused(_NEEDS_PASSWORD)
    _check_members([member.filename for member in members])


def _test_zip(archive: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        _check_zip(zipped)
        bad = zipped.testzip()
    if bad is not None:
        raise _Refused(f"cannot unpack: member {bad!r} is corrupt")


def _seven_zip(archive: Path, scratch: Path, extract: bool = True) -> None:
    import py7zr  # only a .7z needs it

    try:
        with py7zr.SevenZipFile(archive) as packed:
            if packed.needs_password():
                raise _Refused(_NEEDS_PASSWORD)
            _check_members(packed.getnames())
            if extract:
                packed.extractall(path=scratch)
            else:
                bad = packed.testzip()
                if bad is not None:
                    raise _Refused(f"cannot unpack: member {bad!r} is corrupt")
    except py7zr.exceptions.PasswordRequired:
        raise _Refused(_NEEDS_PASSWORD) from None
    except (py7zr.exceptions.ArchiveError, py7zr.exceptions.Bad7zFile, py7zr.exceptions.CrcError,
            py7zr.exceptions.UnsupportedCompressionMethodError) as error:
        raise _Refused(f"cannot unpack: {one_line(str(error)) or type(error).__name__}") from None


def _tar(archive: Path, scratch: Path, extract: bool = True) -> None:
    with tarfile.open(archive) as packed:
        members = packed.getmembers()
        _check_members([member.name for member in members])
        if extract:
            # The "data" filter refuses links out of the folder and device files, and drops modes.
            packed.extractall(scratch, filter="data")
        else:
            for member in members:
                if member.isfile():
                    packed.extractfile(member).read()


def _gz(archive: Path, scratch: Path) -> None:
    scratch.mkdir(parents=True)
    with gzip.open(archive) as packed, open(scratch / stem(archive), "wb") as out:
        shutil.copyfileobj(packed, out)


def _test_gz(archive: Path) -> None:
    with gzip.open(archive) as packed:
        while packed.read(1 << 20):
            pass


_TARS = {suffix: _tar for suffix in (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")}
_EXTRACT: dict[str | None, Callable[[Path, Path], None]] = {
    ".zip": _zip, ".7z": _seven_zip, ".gz": _gz, **_TARS}
_TEST: dict[str | None, Callable[[Path], None]] = {
    ".zip": _test_zip, ".7z": lambda a: _seven_zip(a, a, extract=False), ".gz": _test_gz,
    **{suffix: (lambda a: _tar(a, a, extract=False)) for suffix in _TARS}}
#: What the readers raise on a file that is no archive of its kind, or is cut short.
_UNREADABLE = (zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile, lzma.LZMAError, zlib.error, EOFError,
               NotImplementedError, RuntimeError, ValueError)
