"""Target networks: an exponential moving average of the online network (MoCo, BYOL, DINO).

Targets are declared by a method and updated by this one rule after each optimiser step,
never by hand inside ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ssl_ray.nn.schedules import cosine_momentum


def deactivate_requires_grad(module: nn.Module) -> nn.Module:
    """Targets receive no gradient: they change only through ``update_momentum``."""
    for param in module.parameters():
        param.requires_grad = False
    return module


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target <- m * target + (1 - m) * online`` for every parameter (MoCo, He et al. 2020,
    Eq. 2; BYOL, Grill et al. 2020, Sec. 3.1). Buffers (BatchNorm statistics) are copied, as in
    the reference implementations' target networks, which run BN in training mode."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    online_params = list(online.parameters())
    target_params = list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError("online and target networks have different parameter lists")
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)
    for online_buffer, target_buffer in zip(online.buffers(), target.buffers()):
        target_buffer.copy_(online_buffer)


@dataclass(frozen=True)
class MomentumTargets:
    """A method's declared EMA targets: the online submodules that have a ``target_<name>``
    copy, and the momentum they follow. ``cosine``: from ``start`` at step 0 to 1 at the last
    step (BYOL Sec. 3.2, MoCo v3, DINO Sec. 3.1); ``constant``: ``start`` throughout (MoCo
    v1/v2, Eq. 2). The shared training step updates them after every optimiser step."""

    online: tuple[str, ...]
    start: float
    schedule: Literal["constant", "cosine"]

    def momentum_at(self, step: int, total_steps: int) -> float:
        if self.schedule == "constant":
            return self.start
        return cosine_momentum(step, total_steps, self.start)
