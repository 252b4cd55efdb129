"""Distillation: DINO's student-teacher cross-entropy without labels and the teacher's centre,
and the soft-target cross-entropy of a classifier distilled into a student (SimCLR v2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_ray.nn.distributed import all_reduce_mean
from ssl_ray.nn.losses import in_fp32


def _check_logits(logits: list[torch.Tensor], name: str) -> None:
    if not logits or logits[0].ndim != 2 or any(t.shape != logits[0].shape for t in logits):
        raise ValueError(f"{name} must be a non-empty list of (B, K) tensors of one shape")


class DINOLoss(nn.Module):
    """DINO's cross-entropy between teacher and student (Caron et al. 2021, Eq. 1 and Algorithm 1).

    ``P_t = softmax((g_t - center) / tau_t)`` for each global crop (no gradient: the teacher is
    the student's EMA), ``P_s = softmax(g_s / tau_s)`` for every crop, and
    ``H(P_t, P_s) = -sum_k P_t^(k) log P_s^(k)``. The loss is the mean of ``H``'s batch mean over
    all pairs (teacher crop i, student crop v) with ``v != i``: the student's crops come in the
    same order, the global crops first, so a global crop is never matched with itself. With 2
    global and n local crops that is ``2 * (2 + n) - 2`` pairs, as in the reference ``DINOLoss``.

    The centre and the teacher temperature are arguments, not state: the centre's EMA is
    ``updated_center`` and tau_t a schedule of the step (``linear_warmup_then_constant``).

    Shapes: ``student_logits`` a list of (B, K), one per crop; ``teacher_logits`` a list of
    (B, K), one per global crop; ``center`` (K,). Returns a scalar.
    """

    def __init__(self, student_temperature: float = 0.1) -> None:
        super().__init__()
        if student_temperature <= 0:
            raise ValueError(f"student_temperature must be > 0, got {student_temperature}")
        self.student_temperature = student_temperature

    def forward(
        self,
        student_logits: list[torch.Tensor],
        teacher_logits: list[torch.Tensor],
        center: torch.Tensor,
        teacher_temperature: float,
    ) -> torch.Tensor:
        _check_logits(student_logits, "student_logits")
        _check_logits(teacher_logits, "teacher_logits")
        if teacher_logits[0].shape != student_logits[0].shape:
            raise ValueError(
                f"teacher and student logits differ in shape: {tuple(teacher_logits[0].shape)}, "
                f"{tuple(student_logits[0].shape)}"
            )
        if len(student_logits) < 2 or len(teacher_logits) > len(student_logits):
            raise ValueError(
                f"need >= 2 student crops and no more teacher crops than student crops, "
                f"got {len(student_logits)} student and {len(teacher_logits)} teacher_logits"
            )
        if center.shape != (teacher_logits[0].shape[1],):
            raise ValueError(f"center must be ({teacher_logits[0].shape[1]},), got {tuple(center.shape)}")
        if teacher_temperature <= 0:
            raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature}")
        # Flattened so in_fp32 sees every tensor (it does not look inside lists).
        return self._loss(
            center, *teacher_logits, *student_logits, teachers=len(teacher_logits), tau_t=teacher_temperature
        )

    @in_fp32
    def _loss(self, center: torch.Tensor, *logits: torch.Tensor, teachers: int, tau_t: float) -> torch.Tensor:
        teacher, student = logits[:teachers], logits[teachers:]
        targets = [F.softmax((t.detach() - center.detach()) / tau_t, dim=1) for t in teacher]
        log_probs = [F.log_softmax(s / self.student_temperature, dim=1) for s in student]
        terms = [
            -(target * log_probs[v]).sum(dim=1).mean()
            for i, target in enumerate(targets)
            for v in range(len(student))
            if v != i
        ]
        return torch.stack(terms).mean()


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_logits: list[torch.Tensor], momentum: float = 0.9) -> torch.Tensor:
    """The teacher's centre after one step (Caron et al. 2021, Eq. 4; reference ``update_center``):
    ``c <- m c + (1 - m) mean(g_t)``, the mean over the global crops of every worker's batch
    (workers' sums averaged, then divided by the local count: the global mean for equal shards,
    as in the reference). Centring, with sharpening by a low tau_t, keeps the teacher from
    collapsing. fp32, no gradient.

    Shapes: ``center`` (K,); ``teacher_logits`` a list of (B, K). Returns the new centre (K,).
    """
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    _check_logits(teacher_logits, "teacher_logits")
    if center.shape != (teacher_logits[0].shape[1],):
        raise ValueError(f"center must be ({teacher_logits[0].shape[1]},), got {tuple(center.shape)}")
    with torch.autocast(center.device.type, enabled=False):
        local = torch.cat([t.detach().float() for t in teacher_logits])
        batch_center = all_reduce_mean(local.sum(dim=0)) / local.shape[0]
        return momentum * center.detach().float() + (1 - momentum) * batch_center


class SoftTargetCrossEntropy(nn.Module):
    """SimCLR v2's distillation loss (Chen et al. 2020b, Eq. 3, after Hinton et al. 2015):
    -sum_y P_T(y | x; tau) log P_S(y | x; tau), P = softmax(logits / tau), averaged over the
    batch; the teacher's side carries no gradient."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    @in_fp32
    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        targets = F.softmax(teacher_logits.detach() / self.temperature, dim=1)
        return -(targets * F.log_softmax(student_logits / self.temperature, dim=1)).sum(dim=1).mean()
