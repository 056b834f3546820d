"""A module whose functions run in children (tests/test_isolate.py): it remembers which process
imported it."""

from __future__ import annotations

import os

IMPORTED_BY = os.getpid()


def who_imported(send) -> tuple[int, int]:
    """The process that imported this module, and the one running this call."""
    return IMPORTED_BY, os.getpid()
