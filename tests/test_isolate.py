"""Children start without paying their module's import: the fork server imports every module the
process named (``isolate.child_module``), whichever module's child started it, so a process that
runs the bundle stage's children first still trains each fold without importing Keras again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SCRIPT = """
import sys
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
