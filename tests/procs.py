"""This machine's processes as Linux's /proc shows them: a process's children and descendants,
and whether one still runs. For the tests that check no process outlives its work."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name: state first, then the parent's id."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def parents() -> dict[int, int]:
    """Every live process's id, and its parent's."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = int(_stat(entry.name)[1])
            except (OSError, IndexError, ValueError):  # it ended while we read
                continue
    return found


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    return sorted(child for child, parent in parents().items() if parent == pid)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``: its children, theirs, and so on."""
    tree = parents()
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in tree.items() if parent in frontier}
        found += sorted(frontier)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an ended process its parent has not reaped)."""
    try:
        return _stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def command_line(pid: int) -> bytes:
    """The process's command line, its arguments separated by NULs; empty once it has ended."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
