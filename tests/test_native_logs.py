"""Quiet by default: TensorFlow's start-up lines from a fold's process never reach the terminal
unless foldstack logs at debug level (``-v``); other lines of that process still do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from native_noise import NEWS, START_UP

TESTS = Path(__file__).resolve().parent
SCRIPT = """
import logging, sys
from foldstack.core.logs import setup_logging
from foldstack.runtime import isolate
setup_logging(logging.DEBUG if sys.argv[1] == "-v" else logging.INFO)
print(isolate.call("native_noise:speak"), flush=True)
"""


def _run(flag: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", SCRIPT, flag], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": path})


@pytest.mark.parametrize("flag", ["quiet", "-v"])
def test_start_up_lines_only_with_verbose(flag: str) -> None:
    result = _run(flag)
    assert result.returncode == 0 and result.stdout.strip() == "spoken", result.stderr
    assert NEWS in result.stderr
    shown = [line for line in START_UP if line in result.stderr]
    assert shown == (START_UP if flag == "-v" else []), result.stderr
