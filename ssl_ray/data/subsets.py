"""Few-label subsets: the same images for the same seed, the same share of every class."""

from __future__ import annotations

import numpy as np


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``round(fraction * count)`` images of each class (at least one),
    drawn with ``seed``. SimCLR's 1% / 10% ImageNet subsets are class-balanced the same way."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, round(fraction * len(members)))
        chosen.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen))
