"""What the training loop does around a method, for tests that drive a method by hand."""

from __future__ import annotations

import torch

from ssl_ray.methods.base import SSLMethod, TrainingClock


def take_step(
    method: SSLMethod, optimizer: torch.optim.Optimizer, step: int, total_steps: int, steps_per_epoch: int = 1, **inputs
) -> dict:
    """One optimiser step as ``train/loop.py`` takes it: the clock, forward, backward, frozen
    gradients dropped, the update, then the method's after-step hook (EMA, queues, centres)."""
    method.clock = TrainingClock(step, total_steps, steps_per_epoch)
    out = method(**inputs)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    method.drop_frozen_gradients()
    optimizer.step()
    method.after_step()
    return out
