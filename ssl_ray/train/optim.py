"""Optimisers, with biases and normalisation parameters excluded from weight decay (and so
from LARS adaptation), as in SimCLR / BYOL."""

from __future__ import annotations

import torch
from timm.optim import Lars
from torch import nn

from ssl_ray.sections import OptimConfig


def param_groups(
    model: nn.Module, weight_decay: float, fixed_lr_modules: tuple[str, ...] = (), late_modules: tuple[str, ...] = ()
) -> list[dict]:
    """Weight decay on weights only; groups flagged ``fixed_lr`` skip the lr schedule.

    ``late_modules`` (a method's ``frozen_in_first_epoch``) get groups of their own: their
    gradients are None for the first epoch, and a fused optimiser needs every parameter of a
    group to start (have its momentum buffer created) at the same step."""
    groups: dict[tuple[bool, bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            fixed = name.split(".")[0] in fixed_lr_modules
            late = any(name == m or name.startswith(f"{m}.") for m in late_modules)
            groups.setdefault((param.ndim > 1, fixed, late), []).append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "fixed_lr": fixed}
        for (decay, fixed, _), params in sorted(groups.items())
    ]


def build_optimizer(config: OptimConfig, model: nn.Module, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """``fused``: torch's fused CUDA kernels for SGD and AdamW (parameters must be on the GPU);
    LARS has none and ignores it."""
    groups = param_groups(
        model, config.weight_decay, getattr(model, "fixed_lr_modules", ()), getattr(model, "frozen_in_first_epoch", ())
    )
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, fused=fused or None)
    if config.name == "lars":
        # timm's LARS skips the trust ratio for groups without weight decay (biases, BN).
        return Lars(groups, lr=lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=config.adam_betas, fused=fused or None)
