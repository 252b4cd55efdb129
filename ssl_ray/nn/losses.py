"""Self-supervised losses as small modules, each citing the paper equation it implements."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_ray.nn.distributed import gather_with_grad, rank


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy (SimCLR, Chen et al. 2020, Eq. 1).

    For the 2N views of a batch (N images, two views each),
    ``l(i, j) = -log( exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau) )``
    with ``sim`` the cosine similarity, and the loss is the mean of ``l`` over all 2N ordered
    positive pairs (Algorithm 1). Under DDP the negatives are the views of every worker's batch
    (gathered with gradient), as in the paper's large-batch training.

    Shapes: ``z1, z2``: (N, D), row i of each from the same image. Returns a scalar.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"expected two (N, D) tensors of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
        local = F.normalize(torch.cat([z1, z2]), dim=1).float()
        n = z1.shape[0]
        # Every worker's views as candidates: [z1 of all workers, z2 of all workers].
        all_z1 = gather_with_grad(local[:n])
        all_z2 = gather_with_grad(local[n:])
        candidates = torch.cat([all_z1, all_z2])
        total = all_z1.shape[0]
        offset = rank() * n
        rows = torch.arange(n, device=local.device)
        own = torch.cat([rows + offset, rows + offset + total])  # where each local view sits
        positive = torch.cat([rows + offset + total, rows + offset])
        logits = local @ candidates.T / self.temperature
        logits[torch.arange(2 * n, device=local.device), own] = float("-inf")
        return F.cross_entropy(logits, positive)
