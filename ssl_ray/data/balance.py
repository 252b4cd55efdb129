"""Training images drawn uniformly over classes the training itself assigns (DeepCluster's
pseudo-labels), in the data pipeline.

DeepCluster's fix for trivial solutions (Caron et al. 2018, Sec. 3.3, "Trivial parametrization")
is to sample images "based on a uniform distribution over the classes, or pseudo-labels". The
paper's code draws an epoch's index list of N/k images per cluster with replacement. Here each
image is instead repeated a random number of times with mean ``w_i = N / (k * n_c(i))`` in a
stage of the stream, block by block (``balanced``): every cluster then gets N/k draws per epoch
in expectation, with no global index list to build or hold, whatever reads the images (arrays,
files, shards). The weights live in the object store; the training loop publishes new ones to a
``ClassBalance`` actor after each re-clustering, and every block reads the current ones.
"""

from __future__ import annotations

import numpy as np
import ray
import ray.data

from ssl_ray.views.parts import SAMPLE_INDEX


def uniform_over_classes(classes: np.ndarray) -> np.ndarray:
    """Per image, the expected number of draws per epoch that gives every non-empty class the
    same total, N / k, with the epoch as long as the data (the weights sum to N). An image
    of no class (-1: never decoded, so never assigned) is not drawn."""
    assigned = classes >= 0
    counts = np.bincount(classes[assigned])
    weights = np.zeros(len(classes), dtype=np.float32)
    weights[assigned] = assigned.sum() / (np.count_nonzero(counts) * counts[classes[assigned]])
    return weights


@ray.remote(num_cpus=0)
class ClassBalance:
    """The current per-image sampling weights (an object reference), or None before any."""

    def __init__(self) -> None:
        self._weights: list | None = None

    def publish(self, weights: np.ndarray) -> None:
        self._weights = [ray.put(np.asarray(weights, dtype=np.float32))]  # listed: not dereferenced on return

    def current(self) -> list | None:
        return self._weights


def draws(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's count: the integer part of its weight, plus one with the fractional part's
    probability (mean ``weights``, variance at most 1/4 per row)."""
    whole = np.floor(weights)
    return (whole + (rng.random(len(weights)) < weights - whole)).astype(np.int64)


def _resample(batch: dict[str, np.ndarray], balance, margin: float) -> dict[str, np.ndarray]:
    reference = ray.get(balance.current.remote())
    if reference is None:
        return batch
    weights = ray.get(reference[0])[batch[SAMPLE_INDEX]] * (1.0 + margin)
    rows = np.repeat(np.arange(len(weights)), draws(weights, np.random.default_rng()))
    return {key: value[rows] for key, value in batch.items()}


def balanced(images: ray.data.Dataset, balance, num_samples: int) -> ray.data.Dataset:
    """``images`` (with ``sample_index``) resampled by the weights ``balance`` holds (as they
    are when each block is read: a new epoch reads new weights). The draws are a little above
    the weights (six standard deviations of the epoch's length at most), so an epoch still
    gives the batches the schedule counted; the loop stops there, leaving the surplus unread."""
    margin = 3.0 / np.sqrt(max(1, num_samples))
    return images.map_batches(
        _resample, fn_kwargs={"balance": balance, "margin": margin}, batch_size=None, batch_format="numpy"
    )
