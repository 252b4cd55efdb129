"""Online clustering for SwAV: Sinkhorn-Knopp codes and the swapped-prediction loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_ray.nn.distributed import all_reduce_no_grad, world_size
from ssl_ray.nn.losses import in_fp32


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, iterations: int = 3, epsilon: float = 0.05) -> torch.Tensor:
    """SwAV's codes (Caron et al. 2020, Sec. 3.1 "Computing codes online", Algorithm 1; the reference's
    ``distributed_sinkhorn``): the soft assignment of samples to prototypes that maximises
    ``Tr(Q^T C^T Z) + eps H(Q)`` over the transportation polytope, where every prototype gets an
    equal share (1/K) of the batch and every sample a unit of mass.

    ``Q = exp(scores / eps)^T`` (K, B_global) is scaled so its total is 1; each of ``iterations``
    rounds makes the rows (prototypes) sum to 1/K, then the columns (samples) sum to
    1/B_global; finally the columns are scaled to sum to 1. Under DDP the total and the row sums
    are summed over all workers and ``B_global = B * world_size`` (equal shards, as in the
    reference), so every worker's codes equal those of one process holding the whole batch.

    Deviation: the global max of ``scores / eps`` is subtracted before ``exp`` (a constant
    factor, cancelled by the first normalisation), so unnormalised scores or a small eps cannot
    overflow fp32 (scores / eps > 88); the reference code exponentiates directly. Runs in fp32,
    outside autocast, without gradient.

    Shapes: ``scores`` (B, K) this worker's prototype scores. Returns (B, K), each row a
    distribution over the K prototypes (no reduction).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (B, K), got shape {tuple(scores.shape)}")
    _check_sinkhorn_args(iterations, epsilon)
    with torch.autocast(scores.device.type, enabled=False):
        logits = scores.detach().float() / epsilon
        logits = logits - all_reduce_no_grad(logits.max(), "max")
        q = torch.exp(logits).T  # (K, B): K-by-B as in the paper's notation
        prototypes, samples = q.shape[0], q.shape[1] * world_size()
        q /= all_reduce_no_grad(q.sum())
        # The factors 1/K and 1/B_global cancel in the next normalisation (and B_global in the final
        # rescale); kept so Q is the paper's transport plan between the two marginals.
        for _ in range(iterations):
            q /= all_reduce_no_grad(q.sum(dim=1, keepdim=True))  # each prototype: total mass 1 ...
            q /= prototypes  # ... then 1/K
            q /= q.sum(dim=0, keepdim=True)  # each sample: mass 1 ...
            q /= samples  # ... then 1/B_global
        q *= samples  # columns sum to 1: each sample's code is a distribution
        return q.T


def _check_sinkhorn_args(iterations: int, epsilon: float, prefix: str = "") -> None:
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"{prefix}iterations must be an int >= 1, got {iterations!r}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")


class SwappedPredictionLoss(nn.Module):
    """SwAV's swapped prediction (Caron et al. 2020, Eq. 1-3 and Sec. 3.2 multi-crop).

    For each assigned crop ``i`` (the first ``assign_from`` crops: the global ones) the codes
    ``q_i = sinkhorn(scores_i)`` (Eq. 3, no gradient) are predicted from every other crop ``v``
    (global and local): ``l(z_v, q_i) = -sum_k q_i^(k) log softmax(z_v^T c_k / tau)`` (Eq. 2).
    The loss is the mean over ``i`` of the mean over ``v != i`` of the batch mean of ``l``,
    as in the reference code's ``main_swav.py``.

    ``queue_scores`` (SwAV's queue, for batches smaller than the number of prototypes): per
    assigned crop, the prototype scores (Q, K) of stored features, or None; Sinkhorn then runs on
    the batch and the queue together and only the batch's codes are used.

    Shapes: ``scores`` a list of (B, K), one per crop, all of one shape. Returns a scalar.
    """

    def __init__(self, temperature: float = 0.1, sinkhorn_iterations: int = 3, epsilon: float = 0.05) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        _check_sinkhorn_args(sinkhorn_iterations, epsilon, prefix="sinkhorn_")
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.epsilon = epsilon

    def forward(
        self,
        scores: list[torch.Tensor],
        assign_from: int = 2,
        queue_scores: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        if len(scores) < 2:
            raise ValueError(f"scores must hold at least 2 crops, got {len(scores)}")
        if scores[0].ndim != 2 or any(s.shape != scores[0].shape for s in scores):
            raise ValueError(f"scores must be (B, K) tensors of one shape, got {[tuple(s.shape) for s in scores]}")
        if not 1 <= assign_from <= len(scores):
            raise ValueError(f"assign_from must be in [1, {len(scores)}], got {assign_from}")
        queues = list(queue_scores) if queue_scores is not None else [None] * assign_from
        if len(queues) != assign_from:
            raise ValueError(f"queue_scores must hold one entry per assigned crop ({assign_from}), got {len(queues)}")
        k = scores[0].shape[1]
        if any(q is not None and (q.ndim != 2 or q.shape[1] != k) for q in queues):
            raise ValueError(f"queue_scores must be (Q, {k}) tensors or None")
        # Flattened so in_fp32 sees every tensor (it does not look inside lists).
        return self._loss(*scores, *queues, crops=len(scores))

    @in_fp32
    def _loss(self, *tensors: torch.Tensor | None, crops: int) -> torch.Tensor:
        scores, queues = tensors[:crops], tensors[crops:]
        batch = scores[0].shape[0]
        log_probs = [F.log_softmax(s / self.temperature, dim=1) for s in scores]
        total = scores[0].new_zeros(())
        for i, queue in enumerate(queues):
            assigned = scores[i].detach() if queue is None else torch.cat([scores[i].detach(), queue.detach()])
            # The reference puts the queue first and keeps the last rows; Sinkhorn treats the samples
            # alike (permuting them permutes the codes), so batch first and the first rows are the same.
            codes = sinkhorn_knopp(assigned, self.sinkhorn_iterations, self.epsilon)[:batch]
            others = [v for v in range(crops) if v != i]
            total = total + sum(-(codes * log_probs[v]).sum(dim=1).mean() for v in others) / len(others)
        return total / len(queues)
