"""One training step, the only copy: the worker loop, the tests' helpers, the GPU tests and the
GPU benchmark all take their steps here, so what they exercise is what training does.

clock -> forward under autocast (the losses run in fp32 inside) -> backward -> the non-finite
guard (which also clips) -> frozen-first-epoch gradients dropped -> optimiser -> the
method's declared EMA targets along their schedule -> its after-step hook, given the
forward's outputs (queues, centres).
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_ray.methods.base import SSLMethod, TrainingClock
from ssl_ray.nn.precision import autocast
from ssl_ray.train.guard import NonFiniteGuard, repair_batchnorm
from ssl_ray.views.recipe import Batch


def training_step(
    method: SSLMethod,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    clock: TrainingClock,
    *,
    model: nn.Module | None = None,
    precision: str = "fp32",
    guard: NonFiniteGuard | None = None,
) -> dict[str, torch.Tensor] | None:
    """The forward's outputs, or None for a step the guard skipped (weights, optimiser and
    EMA targets untouched; broken BatchNorm statistics reset). ``model``: the module to call,
    when it wraps ``method`` (DDP)."""
    method.clock = clock
    with autocast(precision, batch.views[0].device):
        out = (model or method)(batch)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if guard is not None and not guard.step_is_finite(out["loss"], method.parameters()):
        repair_batchnorm(method)
        return None
    method.drop_frozen_gradients()
    optimizer.step()
    method.update_targets()
    method.after_step(out)
    return out
