"""TensorFlow's and absl's start-up lines kept off the terminal unless asked for (``-v``).

On a machine without a GPU, every process that imports TensorFlow writes "All log messages
before absl::InitializeLog() is called", "oneDNN custom operations are on", "Could not find cuda
drivers" and, on its first device query, "failed call to cuInit". ``TF_CPP_MIN_LOG_LEVEL`` does
not reach the lines absl writes before it is initialised, and the lines come from native code
writing to file descriptor 2, so no Python logging setting reaches them either.

What works is to hand the Keras processes (the fork server of :mod:`foldstack.runtime.isolate`
and its children, which inherit its descriptors) a pipe as their stderr, and copy to the real
stderr every line that is not start-up noise. The caller's own stderr is left alone, so its
progress bars write straight to the terminal.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from typing import Iterator

#: A line of absl's log format: severity, date, time, thread, file:line.
_NATIVE_LINE = re.compile(r"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ")
#: What TensorFlow says on start-up on a CPU machine (warnings and errors among them).
_START_UP = re.compile(
    r"absl::InitializeLog|cuInit|cuda drivers|cudart_stub|cuda_diagnostics|kernel driver|oneDNN|"
    r"cpu_feature_guard|^To enable the following instructions|rebuild TensorFlow with the appropriate|"
    r"Unable to register cu(DNN|FFT|BLAS)|computation placer|TF-TRT")

_pipe: int | None = None  # the write end the Keras processes get as stderr; one per process
_lock = threading.Lock()


def is_start_up_noise(line: str) -> bool:
    """Whether ``line`` (of a Keras process's stderr) is start-up chatter rather than news:
    informational native lines, and the known start-up warnings and errors."""
    match = _NATIVE_LINE.match(line)
    if match and match["severity"] == "I":
        return True
    return bool(_START_UP.search(line))


@contextmanager
def filtered_stderr(enabled: bool = True) -> Iterator[None]:
    """File descriptor 2 is the noise filter's pipe inside the block (for starting a process
    that inherits it), then the real stderr again; ``enabled=False`` changes nothing."""
    if not enabled:
        yield
        return
    saved = os.dup(2)
    try:
        os.dup2(_filter_pipe(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _filter_pipe() -> int:
    """The pipe's write end; its reader thread copies what is not noise to the real stderr."""
    global _pipe
    with _lock:
        if _pipe is None:
            read_end, _pipe = os.pipe()
            out = os.dup(2)
            threading.Thread(target=_copy_news, args=(read_end, out), name="native-log-filter",
                             daemon=True).start()
        return _pipe


def _copy_news(read_end: int, out: int) -> None:
    pending = b""
    while chunk := os.read(read_end, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        news = [line for line in lines if not is_start_up_noise(line.decode(errors="replace"))]
        if news:
            os.write(out, b"\n".join(news) + b"\n")
    if pending:
        os.write(out, pending)
