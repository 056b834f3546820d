"""Where the folds run, on this CPU machine: fanned out over two device slots, data parallel over
two virtual devices inside a fold (TensorFlow here, JAX in a process of its own), and as tasks on
a local Ray cluster of two worker processes. Each writes the same OOF (and test) files as one
device: the same ids, folds and columns, and probabilities equal up to ``SAME`` where the work is
the same (bitwise in every run measured here, but TensorFlow's CPU kernels do not promise a fixed
summation order: benchmarks/RESULTS.md), within ``DATA_PARALLEL_TOLERANCE`` (TensorFlow) or
``JAX_DATA_PARALLEL_TOLERANCE`` where data parallel splits the batches. Ctrl-C with two slots
ends both running fold processes at once."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, make_config
from procs import children, command_line, descendants

from foldstack.contracts import fold_done
from foldstack.core.config import ComputeConfig, ConfigError
from foldstack.core.paths import Paths
from foldstack.runtime import executor, ray_executor
from foldstack.stages import download, folds, predict, train

# One epoch: a fold whose process is killed and tried again ends with the same weights wherever
# the kill fell (before its epoch: trained again from the same seed; after: its checkpoint).
MODEL = {"name": "m", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "scratch",
         "epochs": 1, "batch_size": 16, "lr": 0.003}
CLASSES = [str(d) for d in range(10)]
#: The same work on another device or executor: equal probabilities, up to float rounding.
SAME = 1e-5
#: Data parallel against one device, TensorFlow (MirroredStrategy over two logical CPU devices):
#: each replica normalises its half of the batch with its own BatchNorm statistics, and the
#: replicas' gradients are summed in another order. Measured: at most 0.030 apart over every OOF
#: probability with this model (0.0085 at lr 0.001). Under JAX (DataParallel shards one global
#: batch) the gap is float rounding: 8.6e-5 (benchmarks/RESULTS.md).
DATA_PARALLEL_TOLERANCE = 0.05
#: Data parallel against one device, JAX (DataParallel shards one global batch over two virtual
#: CPU devices; one BatchNorm over the whole batch): only the order of the float sums differs.
#: Measured: at most 8.6e-5 apart (150 digits, batch 16: benchmarks/RESULTS.md), 2.2e-8 to 4.5e-8
#: in the test (80 training digits, two steps of 20; the flags and cache the test sets, or not).
JAX_DATA_PARALLEL_TOLERANCE = 1e-3
#: How long Ctrl-C may take to end the running fold processes (``isolate.STOP_SECONDS`` for one
#: to end after its SIGINT, a second for one that a terminal interrupted itself, and slack for a
#: busy machine).
STOPPED_WITHIN = 10.0


def competition(root: Path, **compute) -> tuple:
    """The tiny competition, its folds made, trained on this machine's CPUs (``gpu: false``: a
    GPU, where there is one, is hidden from the folds, so the CPU slots and virtual devices these
    tests are about, and the one-device baseline they are compared with, are the same anywhere)."""
    cfg = make_config(models=[MODEL], compute={"gpu": False, **compute})
    paths = Paths.for_pipeline("tiny", root)
    download.run(cfg, paths)
    folds.run(cfg, paths)
    return cfg, paths


def oof_of(paths: Paths) -> pd.DataFrame:
    return pd.read_parquet(paths.oof / "m.parquet")


def done_of(paths: Paths) -> list[dict]:
    return [json.loads((paths.models / "m" / f"fold{fold}" / fold_done.NAME).read_text()) for fold in range(2)]


def assert_same(frame: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(frame, expected, check_exact=False, rtol=0, atol=SAME)


def assert_one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message and all(part in message for part in parts), message


@pytest.fixture(scope="module")
def one_device(tmp_path_factory) -> Paths:
    """The tiny competition trained and predicted one fold at a time, on one device."""
    cfg, paths = competition(tmp_path_factory.mktemp("one-device"))
    train.run(cfg, paths, workers=1)
    predict.run(cfg, paths, workers=1)
    return paths


def in_background(function) -> tuple[threading.Thread, list]:
    """``function()`` in a thread; the list receives its error, if any."""
    errors: list = []

    def run() -> None:
        try:
            function()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def fold_processes() -> list[int]:
    """The fold processes of this test's train stage: the children of its fork server."""
    servers = [pid for pid in children(os.getpid()) if b"forkserver" in command_line(pid)]
    return sorted(pid for server in servers for pid in children(server))


def wait_for(condition, what: str, thread: threading.Thread, errors: list, seconds: float = 300):
    deadline = time.time() + seconds
    while not (found := condition()):
        assert thread.is_alive(), f"the stage ended before {what}: {errors}"
        assert time.time() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.05)
    return found


def interrupt_when_two_run(find, run) -> tuple[list[int], float]:
    """``run()`` in this (the main) thread, and Ctrl-C -- SIGINT to this process alone, as a
    notebook's interrupt sends it -- as soon as ``find()`` sees two processes at work: their ids,
    and the seconds until ``run`` raised KeyboardInterrupt."""
    seen: dict = {}

    def interrupt() -> None:
        deadline = time.time() + 300
        while len(running := find()) < 2 and time.time() < deadline:
            time.sleep(0.05)
        if len(running) == 2 and set(running) <= set(find()):  # still at work: ``run`` is waiting on them
            seen.update(pids=running, at=time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)

    # Python's own Ctrl-C, in case this runner was started with SIGINT ignored (a background job).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    helper = threading.Thread(target=interrupt)
    try:
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            run()
        return seen["pids"], time.perf_counter() - seen["at"]
    finally:
        helper.join()
        signal.signal(signal.SIGINT, previous)


def ended(pids: list[int], find, seconds: float = STOPPED_WITHIN) -> bool:
    """Whether none of ``pids`` is among ``find()``'s processes any more, within ``seconds``."""
    deadline = time.time() + seconds
    while set(pids) & set(find()):
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_two_slots_ctrl_c_ends_both_folds_then_a_killed_fold_is_tried_again(one_device, tmp_path: Path,
                                                                           caplog) -> None:
    """``devices: 2``: both folds train at once. Ctrl-C (SIGINT to this process, as a notebook's
    interrupt sends it: the fold processes get none themselves) while both run ends both within
    seconds and raises KeyboardInterrupt. The rerun trains them again, each in the slot its
    environment names; one of its fold processes is killed and tried again; the OOF file is that
    of one device."""
    cfg, paths = competition(tmp_path, devices=2)
    pids, stopped = interrupt_when_two_run(fold_processes, lambda: train.run(cfg, paths, workers=1))
    assert not set(pids) & set(fold_processes()), "a fold process outlived Ctrl-C"
    assert stopped < STOPPED_WITHIN, f"Ctrl-C took {stopped:.1f} s to end the folds"
    # Ended, not left to finish: interrupted within a second or two of their start, no fold got to
    # its epoch's end (its log's first row).
    logs = [paths.models / "m" / f"fold{fold}" / "log.csv" for fold in range(2)]
    assert not any(log.exists() and len(log.read_text().splitlines()) > 1 for log in logs)
    assert not any((paths.models / "m" / f"fold{fold}" / fold_done.NAME).exists() for fold in range(2))

    thread, errors = in_background(lambda: train.run(cfg, paths, workers=1))
    running = wait_for(lambda: len(fold_processes()) >= 2 and fold_processes(), "two folds at once", thread, errors)
    killed = running[-1]
    os.kill(killed, signal.SIGKILL)
    thread.join()
    assert not errors, errors
    assert "trying it again (1 of 1)" in caplog.text
    done = done_of(paths)
    assert {d["device"]["slot"] for d in done} == {"0", "1"}
    assert killed not in {d["device"]["pid"] for d in done}  # its fold finished in a new process
    assert_same(oof_of(paths), oof_of(one_device))


def test_ctrl_c_keeps_a_job_that_had_finished() -> None:
    """Ctrl-C while the stage writes one job's files, once the other job has ended too: the
    other's result is still handed to ``done`` (kept, not trained again), then KeyboardInterrupt."""
    handed = []

    def done(job: executor.Job, result, seconds: float) -> None:
        handed.append(job.name)
        if len(handed) == 1:
            wait_for(lambda: not fold_processes(), "the other job's end", threading.current_thread(), [], 60)
            raise KeyboardInterrupt

    jobs = [executor.Job(name, "foldstack.training.worker:gpu_count", ()) for name in ("a", "b")]
    with pytest.raises(KeyboardInterrupt):
        executor.LocalExecutor(lambda: [{}, {}]).run(jobs, done)
    assert sorted(handed) == ["a", "b"]


def test_data_parallel_over_two_virtual_devices(one_device, tmp_path: Path) -> None:
    """``data_parallel: true``: each fold's batches split over two logical CPU devices
    (TensorFlow's MirroredStrategy); the OOF within ``DATA_PARALLEL_TOLERANCE`` of one device."""
    cfg, paths = competition(tmp_path, devices=2, data_parallel=True)
    train.run(cfg, paths, workers=1)
    assert [d["device"]["replicas"] for d in done_of(paths)] == [2, 2]
    assert [len(d["device"]["split_over"]) for d in done_of(paths)] == [2, 2]
    split, whole = oof_of(paths), oof_of(one_device)
    assert split["id"].tolist() == whole["id"].tolist()
    gap = np.abs(split[CLASSES].to_numpy() - whole[CLASSES].to_numpy()).max()
    assert 0 < gap < DATA_PARALLEL_TOLERANCE  # really split (not bitwise), and close


#: Trains the tiny pipeline (``argv[1]``, JSON) under ``argv[2]`` on one device (``one/``) and
#: data parallel over two virtual CPU devices (``split/``), in one process (its fork server and
#: Keras import serve both) and at once: a JAX fold's process spends most of its time compiling
#: on one core.
TWO_RUNS = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from foldstack.core.paths import Paths
from foldstack.pipeline import parse_pipeline
from foldstack.stages import download, folds, train
raw = json.loads(sys.argv[1])
runs = {}
for name, compute in (("one", {"gpu": False}), ("split", {"gpu": False, "devices": 2, "data_parallel": True})):
    cfg = parse_pipeline({**raw, "compute": compute})
    runs[name] = cfg, Paths.for_pipeline(cfg.name, Path(sys.argv[2]) / name)
    download.run(*runs[name])
    folds.run(*runs[name])
with ThreadPoolExecutor(2) as pool:
    for trained in [pool.submit(train.run, cfg, paths, workers=1) for cfg, paths in runs.values()]:
        trained.result()
"""


@pytest.mark.slow
def test_jax_data_parallel_over_two_virtual_devices(tmp_path: Path) -> None:
    """Under JAX (``keras.distribution.DataParallel``; the fold process gets its two CPU devices
    from ``XLA_FLAGS``): both folds split over a mesh of two devices, and the OOF is within
    ``JAX_DATA_PARALLEL_TOLERANCE`` of one device's, trained in the same process."""
    # 80 training digits, 40 a fold: two whole batches of 20 (10 a device), so every step has one
    # shape and compiles once.
    raw = {**copy.deepcopy(TINY), "models": [{**MODEL, "batch_size": 20, "lr": 0.01}]}
    raw["data"]["source"]["limit"] = 100
    # Compiling is most of a JAX fold's time here: fold 1 loads fold 0's programs from JAX's
    # compilation cache, and XLA skips its costly optimisations (the same flags for both runs; the
    # executor adds the device count to them): 69 s -> 43 s on the loaded 2-core machine.
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
    run = subprocess.run([sys.executable, "-c", TWO_RUNS, json.dumps(raw), str(tmp_path)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    one, split = (Paths.for_pipeline("tiny", tmp_path / name) for name in ("one", "split"))
    assert {d["device"]["backend"] for d in done_of(one) + done_of(split)} == {"jax"}
    assert [(d["device"]["replicas"], d["device"]["split_over"]) for d in done_of(one)] == [(1, [])] * 2
    assert [(d["device"]["replicas"], d["device"]["split_over"]) for d in done_of(split)] == \
        [(2, ["cpu:0", "cpu:1"])] * 2
    whole, halves = oof_of(one), oof_of(split)
    assert halves["id"].tolist() == whole["id"].tolist() and len(whole) == 80
    gap = np.abs(halves[CLASSES].to_numpy() - whole[CLASSES].to_numpy()).max()
    assert 0 < gap < JAX_DATA_PARALLEL_TOLERANCE, gap  # really split (not bitwise), and close


def test_device_slots_and_more_devices_than_there_are() -> None:
    gpus = executor.slots(ComputeConfig(), gpu_count=lambda: 2)
    assert [slot["CUDA_VISIBLE_DEVICES"] for slot in gpus] == ["0", "1"]
    together = executor.slots(ComputeConfig(data_parallel=True), gpu_count=lambda: 2)
    assert [slot["CUDA_VISIBLE_DEVICES"] for slot in together] == ["0,1"]
    assert executor.slots(ComputeConfig(), gpu_count=lambda: 0) == [{executor.SLOT: "0"}]
    with pytest.raises(ConfigError) as error:
        executor.slots(ComputeConfig(devices=3), gpu_count=lambda: 2)
    assert_one_line(error, "compute.devices = 3", "2 GPU(s)")
    with pytest.raises(ConfigError) as error:
        executor.slots(ComputeConfig(devices=os.cpu_count() + 1), gpu_count=lambda: 0)
    assert_one_line(error, f"compute.devices = {os.cpu_count() + 1}", "no GPU")
    with pytest.raises(ConfigError) as error:
        executor.slots(ComputeConfig(gpu=True), gpu_count=lambda: 0)
    assert_one_line(error, "compute.gpu = true", "no GPU")


def test_compute_keys_are_checked() -> None:
    with pytest.raises(ConfigError) as error:
        make_config(compute={"devices": 0})
    assert_one_line(error, "compute.devices")
    with pytest.raises(ConfigError) as error:
        make_config(compute={"executor": "ray", "devices": 2})
    assert_one_line(error, "compute", "Ray")


# --- Ray ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster of two worker processes for every Ray test (it takes seconds to start),
    shut down after them: its daemons (raylet, GCS, log monitor) take a few per cent of a core
    for as long as they run, which the rest of the session would pay for."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    yield
    ray.shutdown()


def ray_processes(title: str) -> list[int]:
    """This test's Ray processes whose title starts with ``title``: below this process (its local
    cluster's raylet starts the workers), not another session's on the same machine."""
    return [pid for pid in sorted(descendants(os.getpid())) if command_line(pid).startswith(title.encode())]


def listening(run, heard: list):
    """``run`` (an executor's), recording what each job sends and when it is done into ``heard``."""

    def listened(self, jobs, done):
        def relay(job):
            def on_message(message):
                heard.append((job.name, message))
                job.on_message(message)
            return replace(job, on_message=on_message)

        def done_heard(job, *result):
            heard.append((job.name, "done"))
            done(job, *result)

        return run(self, [relay(job) for job in jobs], done_heard)

    return listened


@pytest.mark.slow
def test_ray_executor_writes_the_same_files_and_retries_a_killed_worker(ray_cluster, one_device, tmp_path: Path,
                                                                        capsys, monkeypatch) -> None:
    """Train and predict as Ray tasks: Ctrl-C in the driver as both folds start cancels both
    tasks; then each epoch's score reaches the driver's progress bar as it ends; fold 1's worker
    is killed mid-task and run again by Ray; the OOF and test files are those of the local
    executor; a rerun skips both folds."""
    cfg, paths = competition(tmp_path, executor="ray")
    def tasks() -> list[int]:
        return ray_processes("ray::foldstack m fold")

    pids, _ = interrupt_when_two_run(tasks, lambda: train.run(cfg, paths, workers=1))
    assert ended(pids, tasks), "a Ray task outlived Ctrl-C"

    heard: list[tuple[str, object]] = []  # (job, message) and (job, "done"), in the driver's order
    monkeypatch.setattr(ray_executor.RayExecutor, "run", listening(ray_executor.RayExecutor.run, heard))
    thread, errors = in_background(lambda: train.run(cfg, paths, workers=1))
    killed = wait_for(lambda: ray_processes("ray::foldstack m fold 1"), "Ray task for fold 1", thread, errors)
    os.kill(killed[0], signal.SIGKILL)
    thread.join()
    assert not errors, errors
    for fold in range(2):  # each fold's epoch score reached the driver, before the fold's end
        told = [message for job, message in heard if job == f"m fold {fold}"]
        assert told[-1] == "done" and any(isinstance(message, float) for message in told[:-1]), told
    assert killed[0] not in {d["device"]["pid"] for d in done_of(paths)}
    assert_same(oof_of(paths), oof_of(one_device))

    predict.run(cfg, paths, workers=1)
    assert_same(pd.read_parquet(paths.test / "m.parquet"), pd.read_parquet(one_device.test / "m.parquet"))
    capsys.readouterr()
    train.run(cfg, paths, workers=1)
    out = capsys.readouterr().out
    assert "skip m fold 0" in out and "skip m fold 1" in out


def test_a_ray_cluster_without_gpu_when_the_yaml_asks_for_one(ray_cluster) -> None:
    job = executor.Job("m fold 0", "foldstack.training.worker:gpu_count", ())
    with pytest.raises(ConfigError) as error:
        with ray_executor.connected(ComputeConfig(executor="ray", gpu=True)) as on_ray:
            on_ray.run([job], lambda *_: pytest.fail("no task should run"))
    assert_one_line(error, "compute.gpu = true", "no GPU")


def test_a_ray_address_that_does_not_answer(tiny_digits, monkeypatch) -> None:
    cfg, paths = tiny_digits
    with socket.socket() as closed:  # a port that was free a moment ago: nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    cfg = make_config(models=[MODEL], compute={"executor": "ray", "ray_address": "127.0.0.1:1"})
    with pytest.raises(ConfigError) as error:
        train.run(cfg, paths, workers=1)
    assert_one_line(error, "compute.ray_address = '127.0.0.1:1'", "no Ray cluster answers")
    monkeypatch.setenv(ray_executor.ADDRESS_VARIABLE, f"127.0.0.1:{port}")  # the variable wins over the YAML
    with pytest.raises(ConfigError) as error:
        predict.run(cfg, paths, workers=1)
    assert_one_line(error, f"FOLDSTACK_RAY_ADDRESS = '127.0.0.1:{port}'", "no Ray cluster answers")
