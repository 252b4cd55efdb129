"""Shared pieces for the momentum / stop-gradient methods, against their paper formulas."""

import copy
import math

import numpy as np
import pytest
import torch

from ssl_ray.monitors.collapse import effective_rank, normalized_std
from ssl_ray.nn.heads import mlp
from ssl_ray.nn.losses import InfoNCELoss, NegativeCosineLoss
from ssl_ray.nn.momentum import deactivate_requires_grad, update_momentum
from ssl_ray.nn.schedules import cosine_momentum


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def infonce_by_hand(q, k, negatives, tau):
    q, k = unit(q.astype(np.float64)), unit(k.astype(np.float64))
    total = 0.0
    for i in range(len(q)):
        candidates = [k[i]] + list(unit(negatives.astype(np.float64))) if negatives is not None else list(k)
        positive = 0 if negatives is not None else i
        logits = [float(q[i] @ c) / tau for c in candidates]
        total += -(logits[positive] - math.log(sum(math.exp(v) for v in logits)))
    return total / len(q)


@pytest.mark.parametrize("with_queue", [True, False])
@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
def test_infonce_matches_hand_computation(with_queue, tau):
    rng = np.random.default_rng(int(tau * 100) + with_queue)
    q, k = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
    negatives = rng.normal(size=(11, 8)).astype(np.float32) if with_queue else None
    got = InfoNCELoss(tau)(
        torch.from_numpy(q), torch.from_numpy(k), None if negatives is None else torch.from_numpy(negatives)
    )
    assert got.item() == pytest.approx(infonce_by_hand(q, k, negatives, tau), rel=1e-4)


def test_infonce_keys_get_no_gradient():
    q = torch.randn(4, 8, requires_grad=True)
    k = torch.randn(4, 8, requires_grad=True)
    InfoNCELoss(0.2)(q, k, torch.randn(5, 8)).backward()
    assert q.grad.abs().sum() > 0 and k.grad is None


def test_negative_cosine_matches_formula_and_stops_gradient():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    loss = NegativeCosineLoss()(p, z)
    assert loss.item() == pytest.approx(-(1.0 + (-1 / math.sqrt(2))) / 2)
    loss.backward()
    assert p.grad.abs().sum() > 0 and z.grad is None


def test_update_momentum_formula_and_buffers():
    online = mlp([4, 8, 2])
    target = deactivate_requires_grad(copy.deepcopy(online))
    with torch.no_grad():
        for param in online.parameters():
            param.add_(1.0)
    online(torch.randn(16, 4))  # moves BN running stats of the online net
    before = [t.clone() for t in target.parameters()]
    update_momentum(online, target, 0.9)
    for old, new, src in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * src)
        assert not new.requires_grad
    torch.testing.assert_close(target[1].running_mean, online[1].running_mean)
    with pytest.raises(ValueError):
        update_momentum(online, target, 1.5)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(1 - 0.004 * 0.5)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(500, 100, 0.99, final=0.999) == pytest.approx(0.999)
    values = [cosine_momentum(s, 100, 0.99) for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_collapse_monitors_tell_healthy_from_collapsed():
    d = 64
    healthy = torch.randn(2048, d)
    assert normalized_std(healthy) == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert effective_rank(healthy) > 0.9 * d
    collapsed = torch.ones(512, d) + 1e-6 * torch.randn(512, d)
    assert normalized_std(collapsed) < 1e-4
    line = torch.randn(512, 1) * torch.randn(1, d)  # every embedding on one line through 0
    assert effective_rank(line) == pytest.approx(1.0, abs=0.05)
    assert effective_rank(torch.ones(8, d)) == 1.0
    with pytest.raises(ValueError):
        normalized_std(torch.randn(1, d))
