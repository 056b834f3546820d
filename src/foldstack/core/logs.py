"""Logging set-up, shared by the command line and the processes it starts."""

from __future__ import annotations

import logging


def setup_logging(level: int) -> None:
    """foldstack's own lines at ``level`` (INFO: progress always shows); other libraries only warn."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("foldstack").setLevel(level)
