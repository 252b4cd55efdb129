"""Collapse monitors for embeddings (N, D).

- ``normalized_std``: mean over channels of the per-channel standard deviation of the
  l2-normalised embeddings (SimSiam, Chen & He 2021, Sec. 4.1 / Fig. 2): about 1/sqrt(D) when
  the embeddings spread over the sphere, 0 when they collapse to a point.
- ``effective_rank``: exp of the entropy of the normalised singular values of the centred
  embeddings (Roy & Vetterli 2007), from 1 (collapsed to a line) up to min(N, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def normalized_std(z: torch.Tensor) -> float:
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"need embeddings (N >= 2, D), got {tuple(z.shape)}")
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> float:
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"need embeddings (N >= 2, D), got {tuple(z.shape)}")
    centred = z.float() - z.float().mean(dim=0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    if singular.sum() <= eps:
        return 1.0  # every embedding identical: no direction at all
    p = singular / singular.sum()
    entropy = -(p * (p + eps).log()).sum()
    return entropy.exp().item()
