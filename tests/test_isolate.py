"""Children start without paying their module's import: the fork server imports every module the
process named (``isolate.child_module``), whichever module's child started it, so a process that
runs the bundle stage's children first still trains each fold without importing Keras again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SCRIPT = """
import sys
import time
from foldstack.runtime import isolate
if sys.argv[1] == "named":
    isolate.child_module("isolate_probe")
isolate.call("native_noise:speak")  # another module's child starts the fork server
print(*isolate.call("isolate_probe:who_imported"))
"""


@pytest.mark.parametrize("named", [True, False])
def test_the_fork_server_imports_every_module_named_before_its_first_child(named: bool) -> None:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", SCRIPT, "named" if named else "not named"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": path})
    assert run.returncode == 0, run.stderr
    imported_by, child = map(int, run.stdout.split())
    # Named: the server imported it, and the child was forked with it. Not named: the child imports it.
    assert (imported_by != child) is named


def test_ctrl_c_landing_in_a_callback_still_interrupts_the_child_and_prints_nothing() -> None:
    """A KeyboardInterrupt Python could not raise (it arrived in a garbage-collection callback) is
    neither printed as "Exception ignored" nor lost: the child ends interrupted, not ten seconds later."""
    script = ("from foldstack.runtime import isolate\n"
              "try:\n    print(isolate.call('isolate_probe:ctrl_c_in_a_callback'))\n"
              "except KeyboardInterrupt:\n    print('interrupted')\n")
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": path})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "interrupted" and time.perf_counter() - started < 8
    assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr
