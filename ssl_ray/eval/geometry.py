"""Representation geometry (Wang & Isola 2020) and the embedding spectrum.

- ``alignment``: E ||f(x) - f(y)||^alpha over positive pairs of l2-normalised embeddings
  (Eq. 4 of the paper, alpha 2): 0 when the two views of an image land on the same point.
- ``uniformity``: log E exp(-t ||f(x) - f(y)||^2) over all pairs (Eq. 5, t 2): the lower, the
  more evenly the embeddings spread over the sphere; log(1) = 0 when all coincide.
- ``singular_spectrum``: singular values of the centred embeddings, largest first; a collapsed
  representation has a few large ones and a cliff (Jing et al. 2022, dimensional collapse).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    if z1.shape != z2.shape:
        raise ValueError(f"positive pairs need equal shapes, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return (a - b).norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    x = F.normalize(z.float(), dim=1)
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log().item()


@torch.no_grad()
def singular_spectrum(z: torch.Tensor) -> torch.Tensor:
    centred = z.float() - z.float().mean(dim=0, keepdim=True)
    return torch.linalg.svdvals(centred)
