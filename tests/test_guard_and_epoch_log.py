"""The pieces behind recovery, one at a time: the non-finite step guard and the epoch logger
that writes each epoch to MLflow once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from gloo import run_on_two_workers
from mlflow.tracking import MlflowClient
from torch import nn

from ssl_ray.tracking.epoch_log import EpochMetricsLogger
from ssl_ray.train.guard import NonFiniteGuard, non_finite_tensors, repair_batchnorm


def _backward(model: nn.Module, scale: float) -> torch.Tensor:
    model.zero_grad()
    loss = model(torch.ones(4, 3)).sum() * scale
    loss.backward()
    return loss


def test_guard_skips_non_finite_steps_and_counts_them():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    guard = NonFiniteGuard(max_in_a_row=2)
    assert guard.step_is_finite(_backward(model, 1.0), model.parameters())
    assert not guard.step_is_finite(_backward(model, float("nan")), model.parameters())
    assert not guard.exhausted and guard.in_a_row == 1
    assert guard.step_is_finite(_backward(model, 1.0), model.parameters())  # a good step resets the run
    assert guard.in_a_row == 0
    assert not guard.step_is_finite(_backward(model, float("inf")), model.parameters())
    model.weight.grad = None
    loss = torch.tensor(float("inf"))  # a non-finite loss is enough, even with finite gradients
    assert not guard.step_is_finite(loss, model.parameters())
    assert guard.exhausted and guard.take_skipped() == 3 and guard.take_skipped() == 0


def test_guard_clips_the_gradient_norm():
    model = nn.Linear(3, 2)
    guard = NonFiniteGuard(max_in_a_row=1, clip_norm=0.5)
    assert guard.step_is_finite(_backward(model, 100.0), model.parameters())
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert norm == pytest.approx(0.5, rel=1e-4)


def _one_rank_has_nan(rank: int) -> bool:
    """Rank 1's loss is NaN but, without DDP averaging, its gradients here are finite: the
    all-reduce must still make both ranks skip together."""
    model = nn.Linear(3, 2)
    loss = _backward(model, 1.0)
    if rank == 1:
        loss = loss * float("nan")
    return NonFiniteGuard(max_in_a_row=1).step_is_finite(loss, model.parameters())


def test_guard_decision_is_the_same_on_every_rank():
    assert run_on_two_workers(_one_rank_has_nan) == {0: False, 1: False}


def _shortest_epoch(rank: int) -> float:
    from ssl_ray.nn.distributed import all_reduce_no_grad

    return all_reduce_no_grad(torch.tensor([[5.0, 4.0][rank]]), op="min").item()


def test_ranks_agree_on_the_shortest_epoch():
    """What the loop re-aims the schedule with when an epoch comes out short on some rank."""
    assert run_on_two_workers(_shortest_epoch) == {0: 4.0, 1: 4.0}


def test_repair_batchnorm_resets_only_broken_statistics():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2))
    model.train()
    model(torch.randn(8, 2, 4, 4))
    healthy = model[1].running_mean.clone()
    model[0].running_var[0] = float("nan")
    assert repair_batchnorm(model) == 1
    assert torch.equal(model[0].running_var, torch.ones(2)) and torch.equal(model[0].running_mean, torch.zeros(2))
    assert torch.equal(model[1].running_mean, healthy)
    state = {"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")]), "n": torch.tensor(3)}
    assert non_finite_tensors(state) == ["b"]


def test_epoch_logger_writes_each_epoch_once_when_its_checkpoint_is_safe(mlflow_server):
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment("epoch-log")
    run_id = client.create_run(experiment).info.run_id
    logger = EpochMetricsLogger(mlflow_server, run_id)

    def report(epoch: int, loss: float, checkpoint: bool) -> None:
        metrics = {"epoch": epoch, "loss": loss, "note": "not a number"}
        logger.after_report(SimpleNamespace(checkpoint=object() if checkpoint else None), [metrics, dict(metrics)])

    def logged() -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))

    report(1, 5.0, checkpoint=False)  # checkpoints every 2 epochs: epoch 1 waits for epoch 2's
    assert logged() == []
    report(2, 4.0, checkpoint=True)
    assert logged() == [(1, 5.0), (2, 4.0)]
    report(3, 3.5, checkpoint=False)
    # A worker is lost during epoch 4: the group restarts from epoch 2's checkpoint, and
    # epoch 3 is trained again; only its second result may reach MLflow.
    report(3, 3.4, checkpoint=False)
    report(4, 3.0, checkpoint=True)
    assert logged() == [(1, 5.0), (2, 4.0), (3, 3.4), (4, 3.0)]
    report(5, 2.9, checkpoint=False)
    logger.after_controller_finish(SimpleNamespace(error=RuntimeError("out of retries")))
    assert len(logged()) == 4, "a failed run keeps epoch 5 back: a resume trains it again"
    logger.after_controller_finish(SimpleNamespace(error=None))
    assert logged()[-1] == (5, 2.9)
    assert "note" not in client.get_run(run_id).data.metrics
