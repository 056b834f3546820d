"""Children start without paying their module's import: the fork server imports every module the
process named (``isolate.child_module``), whichever module's child started it, so a process that
runs the bundle stage's children first still trains each fold without importing Keras again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import children, command_line, running

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
    # SIGINT restored to its default: a runner started with it ignored (a background job) passes
    # that on, and Python then leaves Ctrl-C ignored in the child too, where nothing can re-deliver it.
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": path},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "interrupted" and time.perf_counter() - started < 8
    assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr


SERVER_AND_SLEEP = """
import time
from foldstack.runtime import isolate
isolate.child_module("foldstack.training.worker")  # the server preloads TensorFlow, as train's does
isolate.call("foldstack.training.worker:gpu_count")
print("ready", flush=True)
time.sleep(120)
"""


def test_the_fork_server_ends_at_once_when_its_parent_is_killed() -> None:
    """SIGKILL to the process that started the fork server: the server ends within a second, not
    after finalising TensorFlow and JAX (7 s under a load of 4 before runtime/fork_server.py)."""
    process = subprocess.Popen([sys.executable, "-c", SERVER_AND_SLEEP], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        (server,) = [pid for pid in children(process.pid) if b"forkserver" in command_line(pid)]
    finally:
        process.kill()
        process.wait()
    killed = time.perf_counter()
    while running(server) and time.perf_counter() - killed < 30:
        time.sleep(0.01)
    assert time.perf_counter() - killed < 1.0, f"the fork server outlived its parent by {time.perf_counter() - killed:.1f} s"


def test_the_fork_server_module_registers_nothing_in_another_process() -> None:
    """Imported outside the server, fork_server leaves the process's exit as it was."""
    script = ("import atexit\nbefore = atexit._ncallbacks()\nimport foldstack.runtime.fork_server\n"
              "print(atexit._ncallbacks() - before)\nraise SystemExit(3)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout.strip()) == (3, "0"), run.stderr
