"""Optimisers, with biases and normalisation parameters excluded from weight decay (and so
from LARS adaptation), as in SimCLR / BYOL."""

from __future__ import annotations

import torch
from timm.optim import Lars
from torch import nn

from ssl_ray.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(config: OptimConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay)
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    if config.name == "lars":
        # timm's LARS skips the trust ratio for groups without weight decay (biases, BN).
        return Lars(groups, lr=lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=lr)
