import math

import numpy as np
import pytest
import torch

from ssl_ray.nn.losses import InfoNCELoss, NegativeCosineLoss, NTXentLoss


def ntxent_by_hand(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """SimCLR Algorithm 1 written as a plain loop over the 2N views."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    half = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + half) % n2
        numerator = math.exp(z[i] @ z[j] / tau)
        denominator = sum(math.exp(z[i] @ z[k] / tau) for k in range(n2) if k != i)
        total += -math.log(numerator / denominator)
    return total / n2


@pytest.mark.parametrize("n", [1, 2, 7, 32])
@pytest.mark.parametrize("tau", [0.07, 0.2, 0.5, 1.0])
def test_ntxent_matches_hand_computation(n, tau):
    generator = np.random.default_rng(n * 100 + int(tau * 100))
    z1 = generator.normal(size=(n, 16)).astype(np.float32)
    z2 = generator.normal(size=(n, 16)).astype(np.float32)
    got = NTXentLoss(tau)(torch.from_numpy(z1), torch.from_numpy(z2)).item()
    assert got == pytest.approx(ntxent_by_hand(z1, z2, tau), rel=1e-4, abs=1e-5)


def test_ntxent_identical_orthogonal_views_closed_form():
    # Views identical and images mutually orthogonal: the positive has similarity 1, the 2N-2
    # negatives 0, so l = -log(e^(1/t) / (e^(1/t) + 2N-2)) for every view.
    n, tau = 8, 0.5
    z = torch.eye(n, 16)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * n - 2))
    assert NTXentLoss(tau)(z, z.clone()).item() == pytest.approx(expected, rel=1e-6)


def test_ntxent_identical_collapsed_embeddings_give_log_2n_minus_1():
    z = torch.ones(5, 4)
    assert NTXentLoss(0.3)(z, z).item() == pytest.approx(math.log(2 * 5 - 1), rel=1e-6)


def test_ntxent_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(ValueError, match="shape"):
        NTXentLoss(0.1)(torch.zeros(4, 3), torch.zeros(5, 3))


def test_ntxent_gradient_reaches_both_views():
    z1 = torch.randn(6, 8, requires_grad=True)
    z2 = torch.randn(6, 8, requires_grad=True)
    NTXentLoss(0.2)(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_losses_are_computed_in_fp32_under_bf16_autocast():
    """The encoder runs in bf16; the similarities and the softmax must not (in_fp32)."""
    torch.manual_seed(0)
    z1, z2, queue = torch.randn(64, 32), torch.randn(64, 32), torch.randn(256, 32)
    cases = [
        (NTXentLoss(0.1), (z1, z2), {}),
        (InfoNCELoss(0.07), (z1, z2), {"negatives": queue}),
        (InfoNCELoss(0.2), (z1, z2), {}),
        (NegativeCosineLoss(), (z1, z2), {}),
    ]
    for loss, tensors, extra in cases:
        exact = loss(*tensors, **extra)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = loss(*tensors, **extra)
        assert under_autocast.dtype == torch.float32
        torch.testing.assert_close(under_autocast, exact, rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what autocast alone does to a similarity
        drift = (z1 @ z2.T).float() - z1.double() @ z2.double().T
    assert drift.abs().max() > 1e-2  # so the check above could fail
