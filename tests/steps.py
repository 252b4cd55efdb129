"""What the training loop does around a method, for tests that drive a method by hand: the
loop's own step (``ssl_ray.train.step``), with the clock a test names."""

from __future__ import annotations

import torch

from ssl_ray.methods.base import SSLMethod, TrainingClock
from ssl_ray.train.step import training_step
from ssl_ray.views.recipe import Batch


def take_step(
    method: SSLMethod, optimizer: torch.optim.Optimizer, step: int, total_steps: int, batch: Batch, steps_per_epoch=1
) -> dict:
    """One optimiser step as ``train/loop.py`` takes it (fp32, no guard)."""
    return training_step(method, optimizer, batch, TrainingClock(step, total_steps, steps_per_epoch))
