"""Failures during pretraining, through the real stack: a Ray Train worker killed mid-epoch,
NaN losses, and checkpoints cut short."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest
import torch
from cli import ONE_WORKER, SMALL_RUN, pipeline, run_cli, shared_ray_head, shared_ray_head_process
from mlflow.tracking import MlflowClient

from ssl_ray.train.checkpoint import IncompleteCheckpointError, load_state, save_state

STEPS_PER_EPOCH = 2048 // 128
RUN = [
    *SMALL_RUN,
    "data.train_subset=2048",
    "train.log_every_steps=1",
    "eval.knn_bank_size=1000",
    "eval.knn_query_size=500",
    "eval.knn_every_epochs=0",
    "eval.knn_raw_pixels=false",
]


def _train_workers(root: psutil.Process) -> list[psutil.Process]:
    """The Ray Train worker processes under ``root`` (the suite's Ray head, which runs every
    worker of the run; no other run trains meanwhile)."""
    workers = []
    for child in root.children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.NoSuchProcess:
            pass
    return workers


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"the run exited ({process.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_survives_a_killed_worker(tmp_path, mlflow_server, fashion_mnist_dir):
    """Two CPU workers, 2 epochs, a checkpoint every epoch; one worker process is SIGKILLed
    a few steps into epoch 2. Ray Train restarts the group from epoch 1's checkpoint."""
    args = [
        "pretrain",
        pipeline("simclr_fashion_mnist"),
        *RUN,
        "train.epochs=2",
        "train.run_name=recovery",
        "tracking.experiment=recovery",
        "tracking.register_model=false",  # registration is SimCLR's shared run's to test
        f"train.storage_path={tmp_path / 'runs'}",
        "--tracking-uri",
        mlflow_server,
    ]
    log = open(tmp_path / "run.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ssl_ray.cli", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=shared_ray_head(),
    )
    client = MlflowClient(mlflow_server)
    try:
        experiment = _wait_for(lambda: client.get_experiment_by_name("recovery"), 120, "the MLflow run", process)
        run_id = _wait_for(
            lambda: [r.info.run_id for r in client.search_runs([experiment.experiment_id])], 60, "the run", process
        )[0]

        def in_epoch_2() -> bool:
            epochs = client.get_metric_history(run_id, "loss")  # logged once epoch 1's checkpoint is registered
            steps = [m.step for m in client.get_metric_history(run_id, "loss_step")]
            return bool(epochs) and max(steps, default=0) >= STEPS_PER_EPOCH + 4

        _wait_for(in_epoch_2, 300, "epoch 2 to be under way", process)
        workers = _train_workers(shared_ray_head_process())
        assert len(workers) == 2, [w.cmdline() for w in workers]
        killed_at = time.time()
        os.kill(workers[0].pid, signal.SIGKILL)
        returncode = process.wait(timeout=420)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    output = (tmp_path / "run.log").read_text()
    assert returncode == 0, output[-5000:]

    # Every epoch once, however often it was trained.
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2]
    assert all(math.isfinite(m.value) for m in client.get_metric_history(run_id, "loss"))
    assert len(client.get_metric_history(run_id, "knn_top1_init")) == 1
    # One restart, from epoch 1's checkpoint.
    (resumed,) = client.get_metric_history(run_id, "resumed_from_epoch")
    assert resumed.value == 1 and resumed.step == STEPS_PER_EPOCH
    # At most one checkpoint interval (an epoch) was trained twice, and some of it was.
    steps = Counter(m.step for m in client.get_metric_history(run_id, "loss_step"))
    assert sorted(steps) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    repeated = [step for step, count in steps.items() if count > 1]
    assert 0 < len(repeated) <= STEPS_PER_EPOCH and all(count <= 2 for count in steps.values())
    assert all(STEPS_PER_EPOCH < step <= 2 * STEPS_PER_EPOCH for step in repeated)
    assert client.get_run(run_id).info.status == "FINISHED"
    # Every checkpoint left behind is whole (its digest matches) and the last is epoch 2's.
    (run_dir,) = (tmp_path / "runs").iterdir()
    states = [load_state(p) for p in sorted(run_dir.glob("checkpoint_*")) if p.is_dir()]
    assert states and max(s["epoch"] for s in states) == 2
    assert max(s["step"] for s in states) == 2 * STEPS_PER_EPOCH
    lost = resumed.timestamp / 1000 - killed_at
    print(f"\nrecovery: {len(repeated)} steps repeated, training resumed {lost:.1f} s after the kill")


def test_incomplete_checkpoint_is_refused(tmp_path):
    state = {"model": {"w": torch.ones(3)}, "epoch": 1}
    save_state(tmp_path, state)
    assert load_state(tmp_path)["epoch"] == 1
    whole = (tmp_path / "state.pt").read_bytes()
    (tmp_path / "state.pt").write_bytes(whole[: len(whole) // 2])  # cut short mid-write
    with pytest.raises(IncompleteCheckpointError, match="SHA-256"):
        load_state(tmp_path)
    (tmp_path / "state.pt").write_bytes(whole)
    (tmp_path / "state.sha256").unlink()  # killed before the digest was written
    with pytest.raises(IncompleteCheckpointError, match="not completely written"):
        load_state(tmp_path)


def test_nan_losses_stop_the_run_without_a_checkpoint(tmp_path, mlflow_server, fashion_mnist_dir):
    """A learning rate of 1e30 wrecks the weights in one step; every step after is non-finite
    and skipped, and the third in a row stops the run with the reason, before any checkpoint."""
    done = run_cli(
        "pretrain",
        pipeline("simclr_fashion_mnist"),
        *RUN,
        *ONE_WORKER,
        "train.epochs=2",
        "train.run_name=nan",
        "tracking.experiment=nan",
        "train.max_nonfinite_steps=3",
        "optim.base_lr=1e30",
        "eval.knn_at_init=false",
        f"train.storage_path={tmp_path / 'runs'}",
        "--tracking-uri",
        mlflow_server,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 steps in a row had a NaN or infinite loss or gradient" in done.stderr, done.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("nan").experiment_id])
    assert run.info.status == "FAILED" and "NaN or infinite" in run.data.tags["ssl_ray.failure"]
    assert run.data.metrics["nonfinite_steps"] == 3
    run_dirs = list((tmp_path / "runs").glob("nan-*"))
    assert not any(p.is_dir() for d in run_dirs for p in d.glob("checkpoint_*"))
