"""The evaluation protocols' pieces against what they must do on data whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl_ray.data.subsets import balanced_subset
from ssl_ray.eval.geometry import alignment, singular_spectrum, uniformity
from ssl_ray.eval.probe import held_out_split, linear_probe
from ssl_ray.monitors.collapse import effective_rank


def separable(n: int, classes: int = 5, dim: int = 16, seed: int = 0):
    """Gaussian blobs around well-separated class means: a linear classifier gets ~100%."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    means = rng.normal(0, 4, (classes, dim))
    return (means[labels] + rng.normal(0, 0.5, (n, dim))).astype(np.float32), labels


def test_linear_probe_separates_separable_features_and_not_random_labels():
    x, y = separable(1500)
    result = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:])
    assert result.top1 > 0.98 and result.top5 == 1.0
    rng = np.random.default_rng(1)
    shuffled = rng.permutation(y)  # labels independent of the features: chance is 1/5
    chance = linear_probe(x[:1000], shuffled[:1000], x[1000:], shuffled[1000:])
    assert abs(chance.top1 - 0.2) < 0.08


def test_probe_chooses_on_the_training_set_only():
    x, y = separable(1200, dim=8, seed=2)
    x += np.random.default_rng(3).normal(0, 3, x.shape).astype(np.float32)  # overlap: the choice matters
    fit, held = held_out_split(y[:900], 0.1, seed=0)
    assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == 900 and held.max() < 900
    a = linear_probe(x[:900], y[:900], x[900:], y[900:])
    # Scrambled test labels change the score, never the choice (nor the held-out scores).
    b = linear_probe(x[:900], y[:900], x[900:], np.random.default_rng(4).permutation(y[900:]))
    assert a.weight_decay == b.weight_decay and a.held_out_top1 == b.held_out_top1
    assert np.array_equal(a.held_out_indices, held) and a.top1 != b.top1


def test_balanced_subsets_are_per_class_and_seeded():
    labels = np.repeat(np.arange(10), [100, 200, 100, 100, 100, 100, 100, 100, 100, 300])
    subset = balanced_subset(labels, 0.1, seed=7)
    counts = np.bincount(labels[subset], minlength=10)
    assert counts.tolist() == [10, 20, 10, 10, 10, 10, 10, 10, 10, 30]
    assert np.array_equal(subset, balanced_subset(labels, 0.1, seed=7))
    assert not np.array_equal(subset, balanced_subset(labels, 0.1, seed=8))
    assert len(np.unique(subset)) == len(subset) and subset.max() < len(labels)
    assert np.bincount(labels[balanced_subset(labels, 0.001, seed=0)]).min() == 1  # at least one each
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(labels, 0.0, seed=0)


def test_alignment_uniformity_and_spectrum_by_hand():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
    # Normalised: (1,0) vs (0,1): squared distance 2; (0,1) vs (0,1): 0. Mean 1.
    assert alignment(z1, z2) == pytest.approx(1.0)
    assert alignment(z1, z2, alpha=1.0) == pytest.approx(math.sqrt(2) / 2)
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # Pair distances^2: four neighbours at 2, two opposite at 4 -> log mean exp(-2 d^2).
    expected = math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6)
    assert uniformity(square) == pytest.approx(expected, rel=1e-5)
    assert uniformity(torch.ones(5, 3)) == pytest.approx(0.0, abs=1e-6)  # collapsed: log 1
    line = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [3.0, 0.0], [-3.0, 0.0]])
    assert singular_spectrum(line).tolist() == pytest.approx([math.sqrt(20), 0.0], abs=1e-5)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-4)
    # Singular values 2 and 2: p = (1/2, 1/2), entropy log 2, effective rank 2.
    cross = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) * math.sqrt(2)
    assert effective_rank(cross) == pytest.approx(2.0, rel=1e-4)


def test_finetuning_a_multi_crop_run_uses_two_global_views(tmp_path):
    """A DINO or SwAV run (global and local crops) fine-tunes with the supervised method,
    which takes two views: the fine-tuning config drops the local crops."""
    from ssl_ray.config import load_config
    from ssl_ray.eval.finetune import RunSizes, finetune_config

    dino = load_config("pipelines/dino_fashion_mnist.yaml", [f"data.path={tmp_path}"])
    assert dino.augment.local_crops == 4
    tuned = finetune_config(dino, 0.1, RunSizes(epochs=2))
    assert tuned.method.name == "supervised"
    assert (tuned.augment.global_crops, tuned.augment.local_crops) == (2, 0)


def test_finetuning_a_pretext_run_trains_at_the_size_it_is_scored_at(tmp_path):
    """Relative location's views are 48 px (room for its patches); its fine-tuning is scored on
    the 28 px test images, so it trains its classifier at 28 px, from two views."""
    from ssl_ray.config import load_config
    from ssl_ray.eval.finetune import RunSizes, finetune_config

    pretext = load_config("pipelines/relative_location_fashion_mnist.yaml", [f"data.path={tmp_path}"])
    assert (pretext.augment.image_size, pretext.augment.global_crops) == (48, 1)
    tuned = finetune_config(pretext, 0.1, RunSizes(epochs=2))
    assert (tuned.augment.image_size, tuned.augment.global_crops, tuned.method.name) == (28, 2, "supervised")
