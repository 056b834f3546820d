"""The fork server ends at once when the process that started it is gone.

:mod:`foldstack.runtime.isolate` names this module last in the fork server's preload. The server
sees its parent's end (a killed ``foldstack train``) as the end of its ``alive`` pipe and exits;
Python would then finalise every module the server preloaded -- TensorFlow, and the JAX that
TensorFlow's import brings in -- which takes seconds on a loaded machine, while the server still
shows beside its dead parent. It holds no file of foldstack's and its children are already on
their own (each ends with its parent: ``isolate._end_with_parent``), so its last atexit handler
(registered last, it runs first) ends it with ``os._exit``.

Imported anywhere else it registers nothing: ending a process that way would drop its own exit
status and the atexit work of everything it imported.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

#: The module and function whose preload imports this module in the fork server.
SERVER = (str(Path("multiprocessing") / "forkserver.py"), "main")


def imported_by_the_fork_server() -> bool:
    """Whether this import runs inside ``multiprocessing.forkserver.main`` (its preload)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == SERVER[1] and code.co_filename.endswith(SERVER[0]):
            return True
        frame = frame.f_back
    return False


def _end_now() -> None:
    os._exit(0)


if imported_by_the_fork_server():
    atexit.register(_end_now)
