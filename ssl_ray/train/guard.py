"""Non-finite steps: found before the optimiser applies them, skipped, counted, and fatal only
when they keep coming.

One bad batch (an exploding logit in bf16, a corrupt image decoded to noise) should cost one
step, not a multi-hour run; a run that keeps producing NaNs (lr too high, a broken recipe)
should stop with a message rather than train on garbage or checkpoint NaN weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from ssl_ray.nn.distributed import is_distributed


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """Decides, after ``backward()``, whether the step may be applied.

    Every rank reaches the same decision: DDP has already averaged the gradients (a NaN on one
    rank is a NaN on all), and the per-rank loss check is combined with an all-reduce (MIN),
    so no rank steps while another skips. With ``clip_norm`` the gradients are clipped to it
    in the same pass that measures them.
    """

    def __init__(self, max_in_a_row: int, clip_norm: float | None = None) -> None:
        self.max_in_a_row = max_in_a_row
        self.clip_norm = clip_norm
        self.in_a_row = 0
        self.skipped = 0  # since the last ``take_skipped``

    def step_is_finite(self, loss: torch.Tensor, parameters: Iterable[nn.Parameter]) -> bool:
        grads = [p for p in parameters if p.grad is not None]
        if self.clip_norm is not None:
            norm = nn.utils.clip_grad_norm_(grads, self.clip_norm)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in grads])
        ok = (torch.isfinite(loss.detach()) & torch.isfinite(norm)).to(torch.int32)
        if is_distributed():
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        finite = bool(ok.item())
        if finite:
            self.in_a_row = 0
        else:
            self.in_a_row += 1
            self.skipped += 1
        return finite

    @property
    def exhausted(self) -> bool:
        return self.in_a_row >= self.max_in_a_row

    def take_skipped(self) -> int:
        skipped, self.skipped = self.skipped, 0
        return skipped


def repair_batchnorm(model: nn.Module) -> int:
    """A skipped step's forward pass still updated BatchNorm's running statistics; where that
    made them non-finite, reset them (they re-estimate within ~1/momentum steps). Returns how
    many layers were reset."""
    reset = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            if not (torch.isfinite(module.running_mean).all() and torch.isfinite(module.running_var).all()):
                module.reset_running_stats()
                reset += 1
    return reset


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding a NaN or inf (what must never be checkpointed)."""
    return [
        name
        for name, tensor in state.items()
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
