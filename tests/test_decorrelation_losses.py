import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from gloo import run_on_two_workers
from torch import nn

from ssl_ray.nn.decorrelation import BarlowTwinsLoss, VICRegLoss


def barlow_twins_by_hand(z1: np.ndarray, z2: np.ndarray, lam: float, eps: float = 1e-5) -> float:
    """Zbontar et al. 2021, Eq. 1 on features standardised per column (biased std), as loops."""
    n, d = z1.shape

    def standardise(z):
        out = np.empty((n, d))
        for j in range(d):
            mean = sum(float(z[b, j]) for b in range(n)) / n
            var = sum((float(z[b, j]) - mean) ** 2 for b in range(n)) / n
            for b in range(n):
                out[b, j] = (z[b, j] - mean) / math.sqrt(var + eps)
        return out

    a, b = standardise(z1), standardise(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c**2
    return total


def vicreg_terms_by_hand(z1: np.ndarray, z2: np.ndarray, gamma: float = 1.0, eps: float = 1e-4) -> dict:
    """Bardes et al. 2022, Eq. 1-5 as loops (invariance averaged over D as in the reference code)."""
    n, d = z1.shape
    invariance = sum((float(z1[b, j]) - float(z2[b, j])) ** 2 for b in range(n) for j in range(d)) / (n * d)

    def variance_and_covariance(z):
        means = [sum(float(z[b, j]) for b in range(n)) / n for j in range(d)]
        cov = [
            [sum((z[b, i] - means[i]) * (z[b, j] - means[j]) for b in range(n)) / (n - 1) for j in range(d)]
            for i in range(d)
        ]
        v = sum(max(0.0, gamma - math.sqrt(cov[j][j] + eps)) for j in range(d)) / d
        c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    (v1, c1), (v2, c2) = variance_and_covariance(z1), variance_and_covariance(z2)
    return {"invariance": invariance, "variance": (v1 + v2) / 2, "covariance": c1 + c2}


def hadamard_features(n: int = 8) -> torch.Tensor:
    """(n, n-1): columns of a Sylvester Hadamard matrix without the constant one: entries +-1,
    every column mean 0 and biased std 1, columns mutually orthogonal."""
    h = np.ones((1, 1))
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return torch.from_numpy(h[:, 1:]).float()


SIZES = [(2, 1), (2, 4), (5, 3), (16, 8)]


@pytest.mark.parametrize("n, d", SIZES)
@pytest.mark.parametrize("lam", [5e-3, 0.5])
def test_barlow_twins_matches_hand_computation(n, d, lam):
    generator = np.random.default_rng(n * 100 + d)
    z1 = generator.normal(size=(n, d)).astype(np.float32)
    z2 = (z1 + generator.normal(size=(n, d))).astype(np.float32)
    got = BarlowTwinsLoss(lam)(torch.from_numpy(z1), torch.from_numpy(z2)).item()
    assert got == pytest.approx(barlow_twins_by_hand(z1, z2, lam), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("n, d", SIZES)
@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_vicreg_matches_hand_computation(n, d, gamma):
    generator = np.random.default_rng(n * 100 + d + 7)
    z1 = (0.7 * generator.normal(size=(n, d))).astype(np.float32)
    z2 = (z1 + 0.5 * generator.normal(size=(n, d))).astype(np.float32)
    loss = VICRegLoss(2.0, 3.0, 5.0, variance_target=gamma)
    terms = loss.terms(torch.from_numpy(z1), torch.from_numpy(z2))
    expected = vicreg_terms_by_hand(z1, z2, gamma)
    assert set(terms) == {"invariance", "variance", "covariance"}
    for name in terms:
        assert terms[name].item() == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
    weighted = 2.0 * expected["invariance"] + 3.0 * expected["variance"] + 5.0 * expected["covariance"]
    assert loss(torch.from_numpy(z1), torch.from_numpy(z2)).item() == pytest.approx(weighted, rel=1e-4)


def test_barlow_twins_closed_forms():
    eps, lam = 1e-5, 0.1
    z = hadamard_features(8)
    d = z.shape[1]
    loss = BarlowTwinsLoss(lam)
    # Identical, standardised, decorrelated features: C = I / (1 + eps), the loss vanishes (up to eps) ...
    assert loss(z, z.clone()).item() == pytest.approx(d * (eps / (1 + eps)) ** 2, abs=1e-6)
    # ... whatever their scale and offset (each feature is standardised first).
    assert loss(3 * z + 5, z).item() == pytest.approx(0.0, abs=1e-6)
    # Anti-correlated views: C = -I / (1 + eps), each diagonal entry costs (1 + 1)^2.
    assert loss(z, -z).item() == pytest.approx(d * (1 + 1 / (1 + eps)) ** 2, rel=1e-6)
    # Complete collapse (every row equal): standardised features are 0, so C = 0 and L = D.
    collapsed = torch.ones(6, 5) * torch.arange(5.0)
    assert loss(collapsed, collapsed).item() == pytest.approx(5.0, rel=1e-6)
    # Dimensional collapse (every feature the same column): C is all 1 / (1 + eps).
    same = z[:, :1].repeat(1, d)
    expected = d * (eps / (1 + eps)) ** 2 + lam * d * (d - 1) / (1 + eps) ** 2
    assert loss(same, same).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_vicreg_closed_forms(gamma):
    eps = 1e-4
    loss = VICRegLoss(variance_target=gamma)
    # Complete collapse, identical views: no invariance or covariance cost, and every feature
    # pays gamma - sqrt(0 + eps) in each of the two variance terms (averaged over the branches).
    collapsed = torch.ones(6, 5) * torch.arange(5.0)
    terms = loss.terms(collapsed, collapsed)
    assert terms["invariance"].item() == 0.0 and terms["covariance"].item() == 0.0
    assert terms["variance"].item() == pytest.approx(gamma - math.sqrt(eps), rel=1e-6)
    assert loss(collapsed, collapsed).item() == pytest.approx(25.0 * (gamma - math.sqrt(eps)), rel=1e-6)
    # Decorrelated features with std above gamma, shifted between the views: only the shift costs.
    z = gamma * hadamard_features(8)  # unbiased variance gamma^2 * 8/7
    terms = loss.terms(z, z + 0.5)
    assert terms["invariance"].item() == pytest.approx(0.25, rel=1e-6)
    assert terms["variance"].item() == 0.0 and terms["covariance"].item() == pytest.approx(0.0, abs=1e-10)
    # Dimensional collapse: Cov is all s2, so c(Z) = D (D - 1) s2^2 / D per view.
    same = z[:, :1].repeat(1, 4)
    s2 = gamma**2 * 8 / 7
    assert loss.terms(same, same)["covariance"].item() == pytest.approx(2 * 3 * s2**2, rel=1e-5)


def test_bad_arguments_are_rejected():
    for value in (0.0, -1.0):
        with pytest.raises(ValueError, match="lambda_offdiag"):
            BarlowTwinsLoss(value)
    with pytest.raises(ValueError, match="eps"):
        BarlowTwinsLoss(eps=0.0)
    for name in ("invariance_weight", "variance_weight", "covariance_weight"):
        with pytest.raises(ValueError, match=name):
            VICRegLoss(**{name: -1.0})
        VICRegLoss(**{name: 0.0})  # switching a term off is allowed
    for name in ("variance_target", "eps"):
        with pytest.raises(ValueError, match=name):
            VICRegLoss(**{name: 0.0})
    for loss in (BarlowTwinsLoss(), VICRegLoss()):
        with pytest.raises(ValueError, match="shape"):
            loss(torch.zeros(4, 3), torch.zeros(5, 3))
        with pytest.raises(ValueError, match="at least 2"):
            loss(torch.zeros(1, 3), torch.zeros(1, 3))


@pytest.mark.parametrize("loss", [BarlowTwinsLoss(), VICRegLoss()], ids=["barlow_twins", "vicreg"])
def test_gradient_reaches_both_views(loss):
    z1 = torch.randn(6, 8, requires_grad=True)
    z2 = torch.randn(6, 8, requires_grad=True)
    loss(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_losses_are_computed_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    z1, z2 = torch.randn(64, 32), torch.randn(64, 32)
    barlow_twins, vicreg = BarlowTwinsLoss(), VICRegLoss()
    # The undecorated formulas (in_fp32 keeps them in functools' __wrapped__) show what autocast would do.
    cases = [
        (lambda: barlow_twins(z1, z2), lambda: BarlowTwinsLoss.forward.__wrapped__(barlow_twins, z1, z2)),
        (
            lambda: vicreg.terms(z1, z2)["covariance"],
            lambda: VICRegLoss.terms.__wrapped__(vicreg, z1, z2)["covariance"],
        ),
        (lambda: vicreg(z1, z2), None),
    ]
    for protected, unprotected in cases:
        exact = protected()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = protected()
            drifted = unprotected() if unprotected else None
        assert under_autocast.dtype == torch.float32
        torch.testing.assert_close(under_autocast, exact, rtol=1e-6, atol=1e-6)
        if drifted is not None:  # so the check above could fail
            assert abs(drifted.float().item() - exact.item()) > 1e-4 * abs(exact.item())


PROJECTOR_SEED, ROWS, IN_DIM, OUT_DIM = 0, 16, 8, 6
LOSSES = {"barlow_twins": lambda: BarlowTwinsLoss(0.05), "vicreg": lambda: VICRegLoss()}


def _projector_and_views() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(PROJECTOR_SEED)
    projector = nn.Linear(IN_DIM, OUT_DIM)
    x1 = torch.randn(ROWS, IN_DIM)
    return projector, x1, x1 + 0.5 * torch.randn(ROWS, IN_DIM)


def _loss_and_gradients(loss: nn.Module, projector: nn.Linear, x1, x2) -> tuple[torch.Tensor, list[torch.Tensor]]:
    projector.zero_grad()
    value = loss(projector(x1), projector(x2))
    value.backward()
    return value.detach(), [projector.weight.grad.clone(), projector.bias.grad.clone()]


def _ddp_step(rank: int) -> dict:
    """Each worker holds half the rows; the gradients are averaged over the workers as DDP does."""
    projector, x1, x2 = _projector_and_views()
    rows = slice(rank * ROWS // 2, (rank + 1) * ROWS // 2)
    results = {}
    for name, make in LOSSES.items():
        value, gradients = _loss_and_gradients(make(), projector, x1[rows], x2[rows])
        for gradient in gradients:
            dist.all_reduce(gradient)
            gradient /= dist.get_world_size()
        results[name] = (value, gradients)
    return results


def test_two_gloo_workers_give_the_single_process_loss_and_gradient():
    results = run_on_two_workers(_ddp_step)
    projector, x1, x2 = _projector_and_views()
    for name, make in LOSSES.items():
        value, gradients = _loss_and_gradients(make(), projector, x1, x2)
        for rank in (0, 1):
            rank_value, rank_gradients = results[rank][name]
            torch.testing.assert_close(rank_value, value, rtol=1e-6, atol=0)
            # The bias gradient is 0 up to rounding (every term is shift-invariant), hence the atol.
            scale = gradients[0].abs().max().item()
            for got, expected in zip(rank_gradients, gradients):
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * scale)
        # Per-worker statistics (no gather) would give another gradient: the check can fail.
        halves = [
            _loss_and_gradients(make(), projector, x1[rows], x2[rows])
            for rows in (slice(0, ROWS // 2), slice(ROWS // 2, ROWS))
        ]
        local_weight_gradient = (halves[0][1][0] + halves[1][1][0]) / 2
        assert (local_weight_gradient - gradients[0]).abs().max() > 1e-3 * gradients[0].abs().max()
