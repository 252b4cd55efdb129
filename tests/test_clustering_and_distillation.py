import math

import numpy as np
import pytest
import torch
from gloo import run_on_two_workers

from ssl_ray.nn.clustering import SwappedPredictionLoss, sinkhorn_knopp
from ssl_ray.nn.distillation import DINOLoss, updated_center
from ssl_ray.nn.schedules import linear_warmup_then_constant


def cosine_scores(batch: int, prototypes: int, seed: int, dim: int = 8) -> torch.Tensor:
    """Scores as SwAV computes them: l2-normalised features against l2-normalised prototypes."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1)
    c = torch.nn.functional.normalize(torch.randn(prototypes, dim, generator=generator), dim=1)
    return z @ c.T


def sinkhorn_by_hand(scores: np.ndarray, iterations: int, epsilon: float) -> np.ndarray:
    """SwAV Algorithm 1 (distributed_sinkhorn on one process), in float64, without the max shift."""
    q = np.exp(scores.astype(np.float64) / epsilon).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * b
    return (q * b).T


def log_softmax_by_hand(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    shifted = row - row.max()
    return shifted - math.log(sum(math.exp(x) for x in shifted))


def cross_entropy_by_hand(targets: np.ndarray, logits: np.ndarray) -> float:
    """Batch mean of -sum_k targets * log softmax(logits), one row at a time."""
    return sum(-float(targets[b] @ log_softmax_by_hand(logits[b])) for b in range(len(targets))) / len(targets)


def swav_by_hand(scores, assign_from, tau=0.1, iterations=3, epsilon=0.05, queues=None) -> float:
    crops, batch = len(scores), len(scores[0])
    total = 0.0
    for i in range(assign_from):
        assigned = scores[i] if queues is None else np.concatenate([scores[i], queues[i]])
        codes = sinkhorn_by_hand(assigned, iterations, epsilon)[:batch]
        total += sum(cross_entropy_by_hand(codes, scores[v] / tau) for v in range(crops) if v != i) / (crops - 1)
    return total / assign_from


def dino_by_hand(student, teacher, center, tau_s, tau_t) -> tuple[float, int]:
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        logits = (t.astype(np.float64) - center) / tau_t
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        for v, s in enumerate(student):
            if v == i:
                continue
            total += cross_entropy_by_hand(probs, s / tau_s)
            pairs += 1
    return total / pairs, pairs


# --- Sinkhorn-Knopp ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch, prototypes", [(16, 10), (7, 30)])
@pytest.mark.parametrize("iterations, epsilon", [(1, 0.05), (3, 0.05), (10, 0.1)])
def test_sinkhorn_matches_hand_computation(batch, prototypes, iterations, epsilon):
    scores = cosine_scores(batch, prototypes, seed=batch + prototypes)
    got = sinkhorn_knopp(scores, iterations, epsilon)
    expected = sinkhorn_by_hand(scores.numpy(), iterations, epsilon)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_codes_have_the_equipartition_marginals():
    batch, prototypes = 64, 16
    scores = cosine_scores(batch, prototypes, seed=0, dim=128)
    share = batch / prototypes
    converged = sinkhorn_knopp(scores, iterations=50)
    # Every sample's code is a distribution ...
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(batch))
    # ... and every prototype gets an equal share of the batch: B/K (1/K of Q before the rescale).
    torch.testing.assert_close(converged.sum(dim=0), torch.full((prototypes,), share), rtol=1e-4, atol=0)
    # SwAV's 3 iterations: columns exact, rows close; the plain softmax (no iteration) is far off.
    three = sinkhorn_knopp(scores, iterations=3)
    torch.testing.assert_close(three.sum(dim=1), torch.ones(batch))
    assert (three.sum(dim=0) - share).abs().max() < 0.1 * share
    softmax_mass = torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    assert (softmax_mass - share).abs().max() > 0.25 * share  # so the check above means something
    errors = [(sinkhorn_knopp(scores, iterations=n).sum(dim=0) - share).abs().max() for n in (1, 3, 10)]
    assert errors[0] > errors[1] > errors[2]


def test_sinkhorn_is_unchanged_by_a_constant_shift_and_runs_without_gradient():
    scores = cosine_scores(12, 6, seed=2).requires_grad_()
    codes = sinkhorn_knopp(scores)
    assert not codes.requires_grad
    torch.testing.assert_close(sinkhorn_knopp(scores.detach() + 3.0), codes)


# --- SwAV swapped prediction ------------------------------------------------------------------


@pytest.mark.parametrize("crops, assign_from", [(2, 2), (2, 1), (5, 2), (4, 4)])
def test_swapped_prediction_matches_hand_computation(crops, assign_from):
    scores = [cosine_scores(8, 12, seed=10 * crops + v) for v in range(crops)]
    got = SwappedPredictionLoss()(scores, assign_from=assign_from).item()
    expected = swav_by_hand([s.numpy() for s in scores], assign_from)
    assert got == pytest.approx(expected, rel=1e-4)


def test_swav_queue_changes_the_codes_and_only_the_batch_rows_are_used():
    scores = [cosine_scores(4, 16, seed=20 + v) for v in range(3)]
    queues = [cosine_scores(24, 16, seed=30 + i) for i in range(2)]
    loss = SwappedPredictionLoss(temperature=0.1)
    with_queue = loss(scores, queue_scores=queues).item()
    expected = swav_by_hand([s.numpy() for s in scores], 2, queues=[q.numpy() for q in queues])
    assert with_queue == pytest.approx(expected, rel=1e-4)
    assert with_queue != pytest.approx(loss(scores).item(), rel=1e-3)
    # A queue for one crop only: the other crop's codes come from its batch alone.
    partial = loss(scores, queue_scores=[queues[0], None]).item()
    assert partial not in (pytest.approx(with_queue, rel=1e-4), pytest.approx(loss(scores).item(), rel=1e-4))


def test_swav_gradient_flows_through_the_predictions_not_the_codes():
    scores = [cosine_scores(6, 5, seed=40 + v).requires_grad_() for v in range(2)]
    SwappedPredictionLoss()(scores).backward()
    # With the codes constant, d/dx of -sum q log softmax(x / tau) is (softmax(x / tau) - q) / tau
    # per row, times the weights: 1/2 (assigned crops) * 1/1 (other crops) * 1/B (batch).
    for v, other in ((0, 1), (1, 0)):
        codes = sinkhorn_knopp(scores[other])
        expected = (torch.softmax(scores[v].detach() / 0.1, dim=1) - codes) / 0.1 / 2 / 6
        torch.testing.assert_close(scores[v].grad, expected, rtol=1e-4, atol=1e-6)


# --- DINO -------------------------------------------------------------------------------------


@pytest.mark.parametrize("local_crops", [0, 1, 4])
def test_dino_loss_matches_hand_computation_over_the_crop_pairs(local_crops):
    generator = np.random.default_rng(local_crops)
    student = [generator.normal(size=(6, 10)).astype(np.float32) for _ in range(2 + local_crops)]
    teacher = [generator.normal(size=(6, 10)).astype(np.float32) for _ in range(2)]
    center = generator.normal(size=10).astype(np.float32)
    got = DINOLoss(0.1)(
        [torch.from_numpy(s) for s in student], [torch.from_numpy(t) for t in teacher], torch.from_numpy(center), 0.04
    ).item()
    expected, pairs = dino_by_hand(student, teacher, center, 0.1, 0.04)
    assert pairs == 2 * (2 + local_crops) - 2
    assert got == pytest.approx(expected, rel=1e-4)


def test_dino_teacher_and_center_get_no_gradient():
    student = [torch.randn(4, 8, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(4, 8, requires_grad=True) for _ in range(2)]
    center = torch.zeros(8, requires_grad=True)
    DINOLoss()(student, teacher, center, 0.04).backward()
    assert all(t.grad is None for t in teacher) and center.grad is None
    assert all(s.grad.abs().sum() > 0 for s in student)


def test_dino_center_follows_its_ema():
    teacher = [torch.randn(5, 7), torch.randn(5, 7)]
    center = torch.randn(7)
    expected = 0.9 * center + 0.1 * torch.cat(teacher).mean(dim=0)
    torch.testing.assert_close(updated_center(center, teacher), expected)
    torch.testing.assert_close(updated_center(center, teacher, momentum=1.0), center)
    assert not updated_center(center, [t.requires_grad_() for t in teacher]).requires_grad


def test_teacher_temperature_schedule():
    assert linear_warmup_then_constant(0, 30, 0.04, 0.07) == 0.04
    assert linear_warmup_then_constant(10, 30, 0.04, 0.07) == pytest.approx(0.05)
    assert linear_warmup_then_constant(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup_then_constant(30, 30, 0.04, 0.07) == 0.07
    assert linear_warmup_then_constant(10_000, 30, 0.04, 0.07) == 0.07
    assert linear_warmup_then_constant(0, 0, 0.04, 0.07) == 0.07
    values = [linear_warmup_then_constant(s, 30, 0.04, 0.07) for s in range(31)]
    assert np.allclose(np.diff(values), 0.001)  # linear: a constant step of (0.07 - 0.04) / 30


# --- Two gloo workers -------------------------------------------------------------------------

BATCH = 8  # global; each worker holds half


def _global_inputs():
    crops = [cosine_scores(BATCH, 12, seed=50 + v) for v in range(4)]
    queues = [cosine_scores(6, 12, seed=60 + i) for i in range(2)]  # 3 rows per worker
    teacher = [torch.randn(BATCH, 5, generator=torch.Generator().manual_seed(70 + i)) for i in range(2)]
    return crops, queues, teacher, torch.linspace(-1, 1, 5)


def _half(rank: int, tensor: torch.Tensor) -> torch.Tensor:
    rows = tensor.shape[0] // 2
    return tensor[rank * rows : (rank + 1) * rows]


def _on_two_workers(rank: int):
    crops, queues, teacher, center = _global_inputs()
    mine = [_half(rank, s) for s in crops]
    loss = SwappedPredictionLoss()
    return {
        "codes": sinkhorn_knopp(mine[0]),
        "swav": loss(mine).item(),
        "swav_queue": loss(mine, queue_scores=[_half(rank, q) for q in queues]).item(),
        "center": updated_center(center, [_half(rank, t) for t in teacher]),
    }


def test_two_gloo_workers_match_one_process_with_the_whole_batch():
    results = run_on_two_workers(_on_two_workers)
    crops, queues, teacher, center = _global_inputs()
    loss = SwappedPredictionLoss()
    # Sinkhorn's sums run over both workers: each worker's codes are its rows of the global codes.
    torch.testing.assert_close(torch.cat([results[r]["codes"] for r in (0, 1)]), sinkhorn_knopp(crops[0]))
    # Equal shards: DDP averages the workers' gradients, i.e. optimises the mean of their losses.
    mean_loss = (results[0]["swav"] + results[1]["swav"]) / 2
    assert mean_loss == pytest.approx(loss(crops).item(), rel=1e-5)
    # Each worker's queue is part of its Sinkhorn problem: together, the two queues.
    mean_loss = (results[0]["swav_queue"] + results[1]["swav_queue"]) / 2
    assert mean_loss == pytest.approx(loss(crops, queue_scores=queues).item(), rel=1e-5)
    assert results[0]["swav"] != pytest.approx(results[1]["swav"], rel=1e-3)  # the halves differ
    for r in (0, 1):
        torch.testing.assert_close(results[r]["center"], updated_center(center, teacher))


# --- Arguments and precision ------------------------------------------------------------------


def test_bad_arguments_are_rejected():
    scores = [torch.randn(4, 6) for _ in range(3)]
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_knopp(scores[0], epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_knopp(scores[0], iterations=0)
    with pytest.raises(ValueError, match="scores"):
        sinkhorn_knopp(torch.randn(4))
    with pytest.raises(ValueError, match="temperature"):
        SwappedPredictionLoss(temperature=0.0)
    with pytest.raises(ValueError, match="sinkhorn_iterations"):
        SwappedPredictionLoss(sinkhorn_iterations=0)
    with pytest.raises(ValueError, match="epsilon"):
        SwappedPredictionLoss(epsilon=-1.0)
    loss = SwappedPredictionLoss()
    with pytest.raises(ValueError, match="at least 2 crops"):
        loss(scores[:1], assign_from=1)
    with pytest.raises(ValueError, match="one shape"):
        loss([scores[0], torch.randn(4, 7)])
    for bad in (0, 4):
        with pytest.raises(ValueError, match="assign_from"):
            loss(scores, assign_from=bad)
    with pytest.raises(ValueError, match="queue_scores"):
        loss(scores, queue_scores=[torch.randn(5, 6)])
    with pytest.raises(ValueError, match="queue_scores"):
        loss(scores, queue_scores=[torch.randn(5, 7), None])
    with pytest.raises(ValueError, match="student_temperature"):
        DINOLoss(student_temperature=0.0)
    dino, center = DINOLoss(), torch.zeros(6)
    with pytest.raises(ValueError, match="teacher_temperature"):
        dino(scores, scores[:2], center, 0.0)
    with pytest.raises(ValueError, match="center"):
        dino(scores, scores[:2], torch.zeros(5), 0.04)
    with pytest.raises(ValueError, match="teacher_logits"):
        dino(scores[:2], scores, center, 0.04)
    with pytest.raises(ValueError, match="student_logits"):
        dino([], scores[:2], center, 0.04)
    with pytest.raises(ValueError, match="momentum"):
        updated_center(center, scores[:2], momentum=1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        linear_warmup_then_constant(0, -1, 0.04, 0.07)


def test_clustering_and_distillation_run_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    scores = [cosine_scores(64, 32, seed=80 + v) for v in range(4)]
    teacher = [torch.randn(64, 32) for _ in range(2)]
    center = torch.randn(32)
    cases = [
        lambda: sinkhorn_knopp(scores[0]),
        lambda: SwappedPredictionLoss()(scores),
        lambda: SwappedPredictionLoss()(scores, queue_scores=scores[2:]),
        lambda: DINOLoss()(scores, teacher, center, 0.04),
        lambda: updated_center(center, teacher),
    ]
    for case in cases:
        exact = case()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = case()
        assert under_autocast.dtype == torch.float32
        torch.testing.assert_close(under_autocast, exact, rtol=1e-6, atol=1e-6)
    # bf16 inputs come out in fp32 too, with the codes of the rounded scores.
    rounded = scores[0].bfloat16()
    assert sinkhorn_knopp(rounded).dtype == torch.float32
    torch.testing.assert_close(sinkhorn_knopp(rounded), sinkhorn_knopp(rounded.float()))
    assert SwappedPredictionLoss()([s.bfloat16() for s in scores]).dtype == torch.float32
    assert DINOLoss()([s.bfloat16() for s in scores], teacher, center, 0.04).dtype == torch.float32
