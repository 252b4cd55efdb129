"""Redundancy-reduction losses (Barlow Twins, VICReg): statistics of the embedding over the batch.

Both need the statistics of the *global* batch, so under DDP each worker gathers every worker's
embeddings with gradient and computes the loss of the whole batch; every rank holds the same value.
Why that gives exactly the single-process gradient: the backward of ``all_gather`` sums, over the
ranks, the gradient each rank's (identical) loss sends to a worker's rows, i.e. ``world_size`` times
the single-process gradient of those rows; DDP's averaging of the parameter gradients divides by
``world_size`` again, leaving the sum over workers of (rows' gradient x d rows / d parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_ray.nn.distributed import gather_with_grad
from ssl_ray.nn.losses import _check_pair, in_fp32


def _gather_pair(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pair(z1, z2)
    z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    if z1.shape[0] < 2:
        raise ValueError(f"batch statistics need a global batch of at least 2 rows, got {z1.shape[0]}")
    return z1, z2


def _off_diagonal_squares(matrix: torch.Tensor) -> torch.Tensor:
    # Masked rather than "sum of all minus the diagonal", which would cancel the large diagonal
    # against itself and leave fp32 rounding noise of its size in a term that should be small.
    mask = ~torch.eye(matrix.shape[0], dtype=torch.bool, device=matrix.device)
    return matrix[mask].pow(2).sum()


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Zbontar et al. 2021, Eq. 1 and 2):
    ``L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2``, where ``C`` (D, D) is the
    cross-correlation of the two embeddings, each standardised per feature over the global batch
    (mean 0, biased std as in the reference code's ``BatchNorm1d(affine=False)``, eps 1e-5):
    ``C = z1n^T z2n / N_global``.

    Shapes: ``z1, z2`` (N, D), row i of each from the same image; N_global (N summed over the
    workers) must be at least 2. Returns a scalar, summed (not averaged) over the D^2 entries of
    ``C`` as in Eq. 1, so its scale grows with D.
    """

    def __init__(self, lambda_offdiag: float = 5e-3, eps: float = 1e-5) -> None:
        super().__init__()
        if lambda_offdiag <= 0:
            raise ValueError(f"lambda_offdiag must be > 0, got {lambda_offdiag}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.lambda_offdiag = lambda_offdiag
        self.eps = eps

    def _standardise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + self.eps)

    @in_fp32
    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        # The reference code all-reduces per-worker sums of C without gradient (its BN being a
        # SyncBatchNorm); gathering the embeddings needs no SyncBatchNorm and gives the exact gradient.
        z1, z2 = _gather_pair(z1, z2)
        c = self._standardise(z1).T @ self._standardise(z2) / z1.shape[0]
        on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()
        return on_diagonal + self.lambda_offdiag * _off_diagonal_squares(c)


class VICRegLoss(nn.Module):
    """VICReg (Bardes et al. 2022, Eq. 1-6) in the form of the reference code, whose loss the
    paper's coefficients (lambda = mu = 25, nu = 1) were tuned on:
    ``L = lambda s(Z, Z') + mu [v(Z) + v(Z')] / 2 + nu [c(Z) + c(Z')]`` with

    - invariance ``s``: mean squared difference, averaged over the N_global rows *and* the D
      features (the reference code's ``F.mse_loss``; Eq. 5 sums over D, i.e. is D times larger,
      and the paper's lambda = 25 was tuned with the code's form);
    - variance ``v(Z) = mean_j relu(gamma - sqrt(Var(z^j) + eps))`` (Eq. 1-2), unbiased Var over
      the global batch, averaged over the two branches as the reference code does (Eq. 6 adds
      them: the same loss with mu twice as large);
    - covariance ``c(Z) = sum_{i != j} C(Z)_ij^2 / D`` (Eq. 3-4), C the centred covariance over the
      global batch divided by N_global - 1.

    Shapes: ``z1, z2`` (N, D), row i of each from the same image; N_global >= 2. ``forward``
    returns the scalar ``L``; ``terms`` returns the unweighted ``s``, ``(v(Z)+v(Z'))/2``, ``c(Z)+c(Z')``.
    """

    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        variance_target: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        for name, value in (
            ("invariance_weight", invariance_weight),
            ("variance_weight", variance_weight),
            ("covariance_weight", covariance_weight),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if variance_target <= 0:
            raise ValueError(f"variance_target must be > 0, got {variance_target}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.invariance_weight = invariance_weight
        self.variance_weight = variance_weight
        self.covariance_weight = covariance_weight
        self.variance_target = variance_target
        self.eps = eps

    def _variance(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.variance_target - torch.sqrt(z.var(dim=0) + self.eps)).mean()

    @staticmethod
    def _covariance(z: torch.Tensor) -> torch.Tensor:
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (z.shape[0] - 1)
        return _off_diagonal_squares(cov) / z.shape[1]

    @in_fp32
    def terms(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        # The invariance term could be computed locally and averaged by DDP; computing it on the
        # gathered batch too keeps every rank's logged value equal to the single-process one.
        z1, z2 = _gather_pair(z1, z2)
        return {
            "invariance": F.mse_loss(z1, z2),
            "variance": (self._variance(z1) + self._variance(z2)) / 2,
            "covariance": self._covariance(z1) + self._covariance(z2),
        }

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        terms = self.terms(z1, z2)
        return (
            self.invariance_weight * terms["invariance"]
            + self.variance_weight * terms["variance"]
            + self.covariance_weight * terms["covariance"]
        )
