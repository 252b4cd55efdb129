"""Running the ``ssl-ray`` command line as a user would, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def pipeline(name: str) -> str:
    return str(ROOT / "pipelines" / f"{name}.yaml")


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 540) -> subprocess.CompletedProcess:
    """``ssl-ray ARGS``; asserts nothing about the exit code (callers do, with the output)."""
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1"}
    env.pop("RAY_ADDRESS", None)  # it starts its own local Ray, never one a test holds
    return subprocess.run(
        [sys.executable, "-m", "ssl_ray.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )
