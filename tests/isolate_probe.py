"""A module whose functions run in children (tests/test_isolate.py): it remembers which process
imported it."""

from __future__ import annotations

import os
import time

IMPORTED_BY = os.getpid()


def who_imported(send) -> tuple[int, int]:
    """The process that imported this module, and the one running this call."""
    return IMPORTED_BY, os.getpid()


class _CollectedDuringCtrlC:
    """Ctrl-C landing in a garbage-collection callback (JAX's, which TensorFlow's import brings
    in), where Python cannot raise it: this object's finaliser receives it."""

    def __del__(self) -> None:
        raise KeyboardInterrupt


def ctrl_c_in_a_callback(send) -> str:
    """Ctrl-C in a callback, then ten seconds of work: the call should end at once, interrupted."""
    _CollectedDuringCtrlC()
    deadline = time.time() + 10
    while time.time() < deadline:
        time.sleep(0.01)
    return "worked on"
