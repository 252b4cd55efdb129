"""Subsets of a labelled set: the same images for the same seed, every class in its share.

Every subset a run takes (``data.train_subset``, the kNN bank and queries, ``evaluate``'s
sizes, the few-label fine-tuning share) is drawn here, from whatever source, so none of them
is "the first N in listing order": in a folder of class sub-folders that would be the first
classes only, and every figure computed on it would be wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssl_ray.data.errors import DataSourceError


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


def stratified_sample(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` rows (all of them when ``size`` is None or not smaller),
    drawn with ``seed``; where labels exist (>= 0), each class gets its share of ``size`` in
    proportion to its count (largest remainders take the rounding), so a subset of a
    class-sorted listing holds every class as the whole set does. Unlabelled rows (-1) are a
    uniform draw."""
    labels = np.asarray(labels)
    count = len(labels)
    if size is None or size >= count:
        return np.arange(count)
    rng = np.random.default_rng(seed)
    if (labels < 0).all():
        return np.sort(rng.choice(count, size=size, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * size / count
    shares = np.floor(quotas).astype(np.int64)
    # Largest remainders first; ties broken at random so no class is favoured by its index.
    remainder = quotas - shares
    order = np.lexsort((rng.random(len(classes)), -remainder))
    shares[order[: size - shares.sum()]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == label), size=share, replace=False)
        for label, share in zip(classes, shares)
        if share
    ]
    return np.sort(np.concatenate(chosen))


@dataclass(frozen=True)
class Selection:
    """Which of a source's rows a read takes, and in what order."""

    size: int | None = None  # a class-stratified sample of this many rows (None: all)
    seed: int = 0  # the sample's
    label_fraction: float | None = None  # then a class-balanced share of those (few-label runs)
    label_seed: int = 0
    shuffle_seed: int | None = None  # each pass a fresh permutation from this seed; None: listing order

    def rows(self, labels: np.ndarray, where: str) -> np.ndarray:
        chosen = stratified_sample(labels, self.size, self.seed)
        if self.label_fraction is not None:
            if (labels[chosen] < 0).all():
                raise DataSourceError(
                    f"{where}: data.label_fraction needs labels (one sub-folder per class, or a label column)"
                )
            chosen = chosen[balanced_subset(labels[chosen], self.label_fraction, self.label_seed)]
        return chosen


EVERY_ROW = Selection()  # all rows, in listing order: what evaluation reads
