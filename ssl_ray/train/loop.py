"""The Ray Train worker loop: restore -> prepare_model -> epochs of sharded batches -> report.

Runs in every worker process. Only rank 0 evaluates, writes checkpoints and talks to MLflow.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray.experimental.tqdm_ray import tqdm

from ssl_ray.config import PipelineConfig, config_from_dict
from ssl_ray.eval.features import extract_features
from ssl_ray.eval.knn import knn_top1
from ssl_ray.methods import build_method
from ssl_ray.nn.distributed import all_reduce_mean
from ssl_ray.nn.schedules import warmup_cosine
from ssl_ray.tracking.mlflow_run import RunTracker
from ssl_ray.train.checkpoint import load_state, save_state
from ssl_ray.train.optim import build_optimizer
from ssl_ray.train.plan import TrainingPlan
from ssl_ray.train.precision import autocast, resolve_precision

def _knn_monitor(method, config: PipelineConfig, num_classes: int, device, precision: str) -> float:
    batches = dict(batch_size=1024, prefetch_batches=2)
    bank, bank_labels = extract_features(
        method.backbone, ray.train.get_dataset_shard("knn_bank").iter_torch_batches(**batches), device, precision
    )
    query, query_labels = extract_features(
        method.backbone, ray.train.get_dataset_shard("knn_query").iter_torch_batches(**batches), device, precision
    )
    return knn_top1(query, query_labels, bank, bank_labels, num_classes, config.eval.knn_k, config.eval.knn_temperature)


def _should_eval(config: PipelineConfig, epoch: int) -> bool:
    every = config.eval.knn_every_epochs
    return epoch + 1 == config.train.epochs or (every > 0 and (epoch + 1) % every == 0)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config = config_from_dict(loop_config["config"])
    plan = TrainingPlan.from_config(config, loop_config["train_size"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(config.train.threads_per_worker or max(1, int(config.train.cpus_per_worker)))
    torch.manual_seed(config.train.seed)  # same init on every rank (DDP also broadcasts rank 0's)

    device = ray.train.torch.get_device()
    precision = resolve_precision(config.train.precision, device)
    method = build_method(config)
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = load_state(directory)
        method.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(method)  # DDP across workers; moves to device
    optimizer = build_optimizer(config.optim, method, plan.peak_lr)
    start_epoch, step = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the params' device
        start_epoch, step = state["epoch"], state["step"]
    tracker = RunTracker(loop_config["tracking_uri"], loop_config["mlflow_run_id"]) if rank == 0 else None

    if rank == 0 and start_epoch == 0 and config.eval.knn_at_init:
        top1 = _knn_monitor(method, config, loop_config["num_classes"], device, precision)
        tracker.log_metrics({"knn_top1": top1, "knn_top1_init": top1}, step=0)

    shard = ray.train.get_dataset_shard("train")
    view_keys = [f"view{i}" for i in range(loop_config["num_views"])]
    for epoch in range(start_epoch, config.train.epochs):
        started, losses = time.perf_counter(), []
        bar = tqdm(total=plan.steps_per_epoch, desc=f"epoch {epoch + 1}/{config.train.epochs}") if rank == 0 else None
        batches = shard.iter_torch_batches(batch_size=plan.batch_per_worker, drop_last=True, prefetch_batches=2)
        for batch_index, batch in enumerate(batches):
            if batch_index >= plan.steps_per_epoch:
                break  # every worker stops at the same step, so DDP never waits on a missing peer
            lr = warmup_cosine(step, plan.total_steps, plan.warmup_steps, plan.peak_lr, plan.peak_lr * config.optim.final_lr_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            views = [batch[key].to(device, non_blocking=True) for key in view_keys]
            with autocast(precision, device):
                out = model(views)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            method.after_step(step, plan.total_steps)
            step += 1
            losses.append(out["loss"].detach())
            if bar is not None:
                bar.update(1)
                if step % config.train.log_every_steps == 0:
                    tracker.log_metrics({"loss_step": out["loss"].item(), "lr_step": lr}, step=step)
        if bar is not None:
            bar.close()
        if not losses:
            raise RuntimeError(f"epoch {epoch + 1}: the training shard gave no full batch of {plan.batch_per_worker}")
        elapsed = time.perf_counter() - started
        metrics = {
            "epoch": epoch + 1,
            "loss": all_reduce_mean(torch.stack(losses).mean()).item(),
            "lr": lr,
            "images_per_s": len(losses) * plan.global_batch / elapsed,
            "epoch_time_s": elapsed,
        }
        if rank == 0 and _should_eval(config, epoch):
            metrics["knn_top1"] = _knn_monitor(method, config, loop_config["num_classes"], device, precision)
        _report(config, epoch, step, method, optimizer, metrics, tracker)


def _report(config, epoch, step, method, optimizer, metrics, tracker) -> None:
    last = epoch + 1 == config.train.epochs
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
            if last or (epoch + 1) % config.train.checkpoint_every_epochs == 0:
                state = {"model": method.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step}
                save_state(directory, state)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)
