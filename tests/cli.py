"""Running the ``ssl-ray`` command line as a user would, in its own process."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from services import start_ray_head, stop_process_group

ROOT = Path(__file__).resolve().parents[1]

# A 2-worker DDP run small enough for this machine's 2 cores: a width-8 encoder, 128-image
# batches, 1 thread per worker.
SMALL_RUN = [
    "model.width=8",
    "model.blocks=[1,1,1,1]",
    "train.batch_size=128",
    "train.num_workers=2",
    "train.cpus_per_worker=0.5",
    "train.threads_per_worker=1",
    "optim.warmup_epochs=0",
]
# The same with one worker, for runs whose subject is not DDP (each worker costs a process
# start, about 5 s of these 2 cores): what every rank must agree on is tested on 2 gloo ranks
# (test_guard_and_epoch_log, test_queue, test_memory_bank, test_deepcluster) and through Ray
# Train by the 2-worker runs (SimCLR's, the methods', ASHA's sweep, the killed worker).
ONE_WORKER = ["train.num_workers=1"]


def pipeline(name: str) -> str:
    return str(ROOT / "pipelines" / f"{name}.yaml")


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 540) -> subprocess.CompletedProcess:
    """``ssl-ray ARGS``, joined to the suite's one Ray head (``RAY_ADDRESS``, as a user of a
    running cluster would); asserts nothing about the exit code (callers do, with the output)."""
    return subprocess.run(
        [sys.executable, "-m", "ssl_ray.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=shared_ray_head(),
    )


_head: dict = {}


def shared_ray_head() -> dict[str, str]:
    """The environment that joins one loopback Ray head shared by every CLI run of the session,
    started at the first call and stopped when the tests' process exits. A run that joins it
    takes 45-49 s where the same run starting its own local cluster took 60-61 s."""
    if not _head:
        root = Path(tempfile.mkdtemp(prefix="ray-head-"))  # short: Ray's socket paths must fit
        process, env = start_ray_head(root)
        _head.update(env=env, process=process, root=root)
        atexit.register(stop_shared_ray_head)
    return dict(_head["env"])


def stop_shared_ray_head() -> None:
    """Stops the shared head and removes its files; called at the end of the tests (conftest.py)
    and, should that be skipped, at exit."""
    if _head:
        stop_process_group(_head["process"])
        shutil.rmtree(_head["root"], ignore_errors=True)
        _head.clear()


def shared_ray_head_process() -> psutil.Process:
    """The head's ``ray start`` process: the raylet, and every worker it starts, run under it."""
    shared_ray_head()
    return psutil.Process(_head["process"].pid)


@contextlib.contextmanager
def joined_to_the_shared_head():
    """``ray.init`` in this process joins the shared head (its address and token), for tests
    that drive Ray Data or Ray Train in-process; disconnects after."""
    import ray

    env = shared_ray_head()
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):  # read by Ray at import: set by conftest.py
        if os.environ.get(name) != env[name]:
            raise RuntimeError(f"{name} differs from the head's: set it before Ray is imported")
    ray.init(address=env["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
