"""Self-supervised losses as small modules, each citing the paper equation it implements."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ssl_ray.nn.distributed import gather_no_grad, gather_with_grad, rank


def in_fp32(forward):
    """Run a loss outside autocast, on fp32 inputs. Under bf16 autocast a similarity matmul
    would run in bf16 (8 bits of mantissa) even on fp32 inputs, and logits divided by a
    temperature of 0.1 would carry errors of ~0.04; the encoder stays in bf16, the loss not."""

    @functools.wraps(forward)
    def wrapped(self, *tensors, **kwargs):
        device_type = next((t.device.type for t in tensors if isinstance(t, torch.Tensor)), "cpu")
        with torch.autocast(device_type, enabled=False):
            return forward(self, *(t.float() if isinstance(t, torch.Tensor) else t for t in tensors), **kwargs)

    return wrapped


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")


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

    @in_fp32
    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        _check_pair(z1, z2)
        local = F.normalize(torch.cat([z1, z2]).float(), dim=1)
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


class InfoNCELoss(nn.Module):
    """InfoNCE of queries against keys (MoCo, He et al. 2020, Eq. 1):
    ``L_q = -log( exp(q.k+ / tau) / sum_{i=0}^{K} exp(q.k_i / tau) )`` over l2-normalised vectors.

    - With ``negatives`` (K, D) (MoCo v1/v2's queue): logits are ``[q.k+, q.negatives]`` and the
      positive is column 0.
    - Without (MoCo v3, Chen et al. 2021, Algorithm 1): the keys of every worker's batch are the
      candidates and the positive is the query's own key. MoCo v3 also scales the loss by
      ``2 * tau``; that belongs to the method, not here.

    Keys get no gradient (they come from the target network). Shapes: ``q, k`` (N, D). Scalar.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @in_fp32
    def forward(self, q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        _check_pair(q, k)
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.detach().float(), dim=1)
        if negatives is not None:
            negatives = F.normalize(negatives.detach().float(), dim=1)
            logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ negatives.T], dim=1)
            labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        else:
            logits = q @ gather_no_grad(k).T
            labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
        return F.cross_entropy(logits / self.temperature, labels)


class NegativeCosineLoss(nn.Module):
    """``D(p, z) = -cos(p, stopgrad(z))`` averaged over the batch (SimSiam, Chen & He 2021,
    Eq. 1 and 3). BYOL's ``2 - 2 cos(p, sg(z'))`` (Grill et al. 2020, Eq. 2) is ``2 + 2 D``.

    Shapes: ``p, z`` (N, D). Returns a scalar in [-1, 1]; no gradient reaches ``z`` unless
    ``stop_gradient=False`` (SimSiam's collapse ablation, Sec. 4.1).
    """

    def __init__(self, stop_gradient: bool = True) -> None:
        super().__init__()
        self.stop_gradient = stop_gradient

    @in_fp32
    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        _check_pair(p, z)
        z = z.detach() if self.stop_gradient else z
        return -F.cosine_similarity(p.float(), z.float(), dim=1).mean()
