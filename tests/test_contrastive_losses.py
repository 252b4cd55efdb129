"""DCL, DCLW and SupCon: the NT-Xent code path with other positives and denominators."""

import math

import numpy as np
import pytest
import torch
from gloo import run_on_two_workers

from ssl_ray.nn.losses import DecoupledContrastiveLoss, NTXentLoss, SupConLoss


def _unit(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def dcl_by_hand(z1, z2, tau, sigma=None):
    """Yeh et al. 2022 written as a loop over the 2N anchors."""
    z = _unit(np.concatenate([z1, z2]))
    n2, half = len(z), len(z) // 2
    positives = [z[i] @ z[(i + half) % n2] for i in range(half)]
    mean_exp = sum(math.exp(s / sigma) for s in positives) / half if sigma else None
    total = 0.0
    for i in range(n2):
        j = (i + half) % n2
        weight = 2 - math.exp(z[i] @ z[j] / sigma) / mean_exp if sigma else 1.0
        negatives = sum(math.exp(z[i] @ z[k] / tau) for k in range(n2) if k not in (i, j))
        total += -weight * (z[i] @ z[j]) / tau + math.log(negatives)
    return total / n2


def supcon_by_hand(z1, z2, labels, tau):
    """Khosla et al. 2020, Eq. 2, as a loop: each anchor's mean log-probability of its positives."""
    z = _unit(np.concatenate([z1, z2]))
    y = np.concatenate([labels, labels])
    total = 0.0
    for i in range(len(z)):
        denominator = sum(math.exp(z[i] @ z[a] / tau) for a in range(len(z)) if a != i)
        positives = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        total += -sum(math.log(math.exp(z[i] @ z[p] / tau) / denominator) for p in positives) / len(positives)
    return total / len(z)


def _pair(n, seed, d=12):
    generator = np.random.default_rng(seed)
    return generator.normal(size=(n, d)).astype(np.float32), generator.normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("tau, sigma", [(0.1, None), (0.5, None), (0.2, 0.5), (1.0, 0.3)])
def test_dcl_and_dclw_match_hand_computation(n, tau, sigma):
    z1, z2 = _pair(n, n)
    got = DecoupledContrastiveLoss(tau, weight_sigma=sigma)(torch.from_numpy(z1), torch.from_numpy(z2)).item()
    assert got == pytest.approx(dcl_by_hand(z1, z2, tau, sigma), rel=1e-4, abs=1e-5)


def test_dcl_closed_form_and_difference_from_ntxent():
    # Identical views, mutually orthogonal images: the positive's logit is 1/tau, the 2N-2
    # negatives 0, so DCL = -1/tau + log(2N-2), and NT-Xent adds the positive to the sum.
    n, tau = 8, 0.5
    z = torch.eye(n, 16)
    assert DecoupledContrastiveLoss(tau)(z, z.clone()).item() == pytest.approx(-1 / tau + math.log(2 * n - 2), rel=1e-6)
    ntxent = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * n - 2))
    assert NTXentLoss(tau)(z, z.clone()).item() == pytest.approx(ntxent, rel=1e-6)
    # Every positive alike: DCLW's weights are all 1 and it is DCL.
    assert DecoupledContrastiveLoss(tau, weight_sigma=0.5)(z, z.clone()).item() == pytest.approx(
        -1 / tau + math.log(2 * n - 2), rel=1e-6
    )


@pytest.mark.parametrize("n, classes", [(4, 2), (9, 3), (16, 16)])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_supcon_matches_hand_computation(n, classes, tau):
    z1, z2 = _pair(n, 100 + n)
    labels = np.arange(n) % classes
    got = SupConLoss(tau)(torch.from_numpy(z1), torch.from_numpy(z2), torch.from_numpy(labels)).item()
    assert got == pytest.approx(supcon_by_hand(z1, z2, labels, tau), rel=1e-4, abs=1e-5)


def test_supcon_with_all_labels_distinct_is_ntxent():
    z1, z2 = (torch.from_numpy(z) for z in _pair(10, 7))
    torch.testing.assert_close(SupConLoss(0.2)(z1, z2, torch.arange(10)), NTXentLoss(0.2)(z1, z2))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        DecoupledContrastiveLoss(0.0)
    with pytest.raises(ValueError, match="weight_sigma"):
        DecoupledContrastiveLoss(0.1, weight_sigma=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(-0.1)
    with pytest.raises(ValueError, match="one label per row"):
        SupConLoss(0.1)(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))


def _global_batch():
    generator = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(12, 8, generator=generator), torch.randn(12, 8, generator=generator)
    return z1, z2, torch.arange(12) % 3


def _losses_on_a_half(rank):
    """Each rank's loss on its half of the global batch (DDP averages the ranks' gradients)."""
    z1, z2, labels = _global_batch()
    rows = slice(6 * rank, 6 * rank + 6)
    return {
        "dclw": DecoupledContrastiveLoss(0.2, weight_sigma=0.5)(z1[rows], z2[rows]).item(),
        "supcon": SupConLoss(0.2)(z1[rows], z2[rows], labels[rows]).item(),
    }


def test_two_gloo_workers_give_the_single_process_loss():
    """Negatives, labels and DCLW's weights come from the global batch: the mean of the two
    ranks' losses is the loss of one process holding all 12 images."""
    z1, z2, labels = _global_batch()
    expected = {
        "dclw": DecoupledContrastiveLoss(0.2, weight_sigma=0.5)(z1, z2).item(),
        "supcon": SupConLoss(0.2)(z1, z2, labels).item(),
    }
    results = run_on_two_workers(_losses_on_a_half)
    for name, value in expected.items():
        assert (results[0][name] + results[1][name]) / 2 == pytest.approx(value, rel=1e-5), name
