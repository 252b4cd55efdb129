"""Schedules as pure functions of the global step, so a resumed run lands on the same values."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to ``final``
    at ``total_steps`` (SGDR without restarts, Loshchilov & Hutter 2017, Eq. 5)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA momentum rising from ``base`` to ``final`` along a half cosine (BYOL, Grill et al.
    2020, Sec. 3.2: ``tau = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2``)."""
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def linear_warmup_then_constant(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear from ``start`` at step 0 to ``end`` at ``warmup_steps``, then constant: DINO's
    teacher temperature, 0.04 -> 0.07 over the first 30 epochs (Caron et al. 2021, implementation
    details; the reference ``DINOLoss.teacher_temp_schedule``: ``np.linspace`` over
    ``warmup_teacher_temp_epochs``, then constant). The reference reaches ``end`` one epoch
    early (``linspace`` includes its endpoint); here the slope is ``(end - start) / warmup_steps``
    and ``end`` is reached at ``warmup_steps``, counted in steps rather than epochs."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
