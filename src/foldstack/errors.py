"""Errors meant for a person: the CLI prints the message as one line and exits non-zero,
without a traceback. Anything else that escapes is a bug and keeps its traceback."""


class FoldstackError(Exception):
    """Bad input or a failed precondition; the message names the file, row or key."""

    exit_code = 2


class DataError(FoldstackError):
    """The competition's files are missing or malformed."""
