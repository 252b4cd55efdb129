"""The Ray Train worker loop: restore -> prepare_model -> epochs of sharded batches -> report.

Runs in every worker process. Only rank 0 evaluates, writes checkpoints and talks to MLflow.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from ssl_ray.config import PipelineConfig, config_from_dict
from ssl_ray.data.balance import uniform_over_classes
from ssl_ray.data.decode import SKIP_REASONS
from ssl_ray.methods.base import SSLMethod, TrainingClock
from ssl_ray.monitors.collapse import effective_rank, normalized_std
from ssl_ray.monitors.features import as_nchw, extract_features, pixels_as_features
from ssl_ray.monitors.knn import knn_top1
from ssl_ray.nn.distributed import all_reduce_mean, all_reduce_no_grad, rank_zero_says
from ssl_ray.nn.precision import resolve_memory_format, resolve_precision
from ssl_ray.nn.schedules import warmup_cosine
from ssl_ray.tracking.fitted import ARTIFACTS as FITTED_ARTIFACTS
from ssl_ray.tracking.fitted import fitted_file
from ssl_ray.tracking.mlflow_run import RunTracker
from ssl_ray.tracking.pictures import save_image_rows
from ssl_ray.train.build import build_method
from ssl_ray.train.checkpoint import load_state, save_state
from ssl_ray.train.guard import NonFiniteGuard, non_finite_tensors
from ssl_ray.train.optim import build_optimizer
from ssl_ray.train.plan import TrainingPlan
from ssl_ray.train.refit import adopt_fitted, refit_targets
from ssl_ray.train.step import training_step
from ssl_ray.train.worker_config import WorkerConfig
from ssl_ray.views.transforms import DeviceViews

# Reported (with the count of non-finite steps in a row) when the guard stops the run.
STOPPED_NONFINITE = "stopped_nonfinite"
# Reported (with the epoch) when the training data gave no full batch: nothing decodes enough.
STOPPED_NO_BATCH = "stopped_no_batch"
# Not reported: the sweep's scheduler stopped the trial at the last reported epoch.
STOPPED_BY_SWEEP = "stopped_by_sweep"
# A sweep's trial looks for the scheduler's verdict on the last epoch this often (in steps).
VERDICT_POLL_STEPS = 5
_NOT_IN, _GO_ON, _STOP = 0, 1, 2  # a sweep's verdict as rank 0 broadcasts it
# Collapse monitors use the embeddings of the epoch's last few batches (about 1k rows).
MONITOR_BATCHES = 8


def _eval_batches(name: str):
    """One pass over an evaluation dataset (kNN bank or queries, the training images for
    fitting targets), unsplit, on this worker."""
    return ray.train.get_dataset_shard(name).iter_torch_batches(batch_size=1024, prefetch_batches=2)


TRAINING_IMAGES = "training_images"  # the dataset a method that fits targets embeds


@dataclass
class Worker:
    """What one worker holds for the whole run."""

    config: PipelineConfig
    plan: TrainingPlan
    setup: WorkerConfig
    rank: int
    device: torch.device
    memory_format: torch.memory_format
    precision: str
    method: SSLMethod  # the bare module: what is checkpointed and evaluated
    model: torch.nn.Module  # the same module, DDP-wrapped when there are several workers
    optimizer: torch.optim.Optimizer
    tracker: RunTracker | None  # rank 0 only
    guard: NonFiniteGuard
    device_views: DeviceViews | None  # the colour part of the views, when it runs here
    epoch: int = 0
    step: int = 0
    verdict: Any = None  # rank 0 of a sweep's trial: the question on the last reported epoch
    verdict_pending: bool = False  # every rank of a trial: that question is not answered yet

    def knn(self, encoder: torch.nn.Module, precision: str | None = None) -> float:
        def features(name, what):
            batches = _eval_batches(name)
            try:
                return extract_features(encoder, batches, self.device, precision or self.precision)
            except ValueError as error:  # nothing decodable: say which set, not just "no images"
                raise RuntimeError(f"kNN monitor: {what} hold no decodable images ({error})") from None

        bank, bank_labels = features("knn_bank", "the bank's training images")
        query, query_labels = features("knn_query", "the queries (data.val_path; is data.val_source right?)")
        e = self.config.eval
        k = self.setup.knn_k  # fitted to the bank's smallest class by the driver
        return knn_top1(query, query_labels, bank, bank_labels, self.setup.num_classes, k, e.knn_temperature)

    def fit_targets(self) -> dict[str, float]:
        """New targets before epoch ``epoch + 1`` (rank 0's metrics), and the data pipeline's
        draws made uniform over their classes."""
        if self.setup.fitted_state is not None:
            metrics = adopt_fitted(self.method, self.setup.fitted_state, self.epoch)
        else:
            metrics = refit_targets(
                self.method,
                self.optimizer,
                lambda: _eval_batches(TRAINING_IMAGES),
                self.setup.train_size,
                self.epoch,
                self.device,
                self.precision,
                self.config.train.seed,
            )
        self.publish_balance()
        if self.tracker is not None and self.method.fitted_buffers:
            # What the fit made (BEiT's tokenizer, colourisation's weights), in the run's artifacts.
            with tempfile.TemporaryDirectory() as directory:
                path = f"{directory}/{fitted_file(self.method.name, self.epoch + 1)}"
                torch.save({name: getattr(self.method, name).cpu() for name in self.method.fitted_buffers}, path)
                self.tracker.log_artifact(path, FITTED_ARTIFACTS)
        return metrics

    def publish_balance(self) -> None:
        classes = self.method.target_classes()
        if self.rank == 0 and classes is not None and self.setup.class_balance is not None:
            ray.get(self.setup.class_balance.publish.remote(uniform_over_classes(classes.cpu().numpy())))

    def classifier_top1(self) -> float:
        """Top-1 of a label-trained method's own classifier on the held-out images."""
        batches = _eval_batches("knn_query")
        classify = _Classifier(self.method)
        logits, labels = extract_features(classify, batches, self.device, self.precision)
        return (logits.argmax(dim=1) == labels).float().mean().item()


class _Classifier(torch.nn.Module):
    """A label-trained method's images -> logits, in the shape ``extract_features`` runs."""

    def __init__(self, method: SSLMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.logits(images)


def _start(setup: WorkerConfig) -> Worker:
    config = config_from_dict(setup.config)
    plan = TrainingPlan.from_config(config, setup.train_size)
    torch.set_num_threads(config.train.threads_per_worker or max(1, int(config.train.cpus_per_worker)))
    torch.manual_seed(config.train.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    device = ray.train.torch.get_device()
    method = build_method(config)
    if setup.sync_batchnorm:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = load_state(directory)
        method.load_state_dict(state["model"])
        if "steps_per_epoch" in state:
            # The epochs' length the run measured (an epoch that came out short re-aimed it),
            # and a schedule that ends with this run's ``train.epochs``: a --resume with more
            # epochs than the checkpoint's run had trains them on a schedule that ends with them
            # (the checkpoint's own end would hold the learning rate at its final value).
            plan = plan.with_steps_per_epoch(
                state["steps_per_epoch"], state["step"], config.train.epochs - state["epoch"]
            )
    memory_format = resolve_memory_format(config.train.memory_format, device)
    method = method.to(memory_format=memory_format)  # before DDP, which keeps the layout
    if config.train.compile:
        # In place (nn.Module.compile): parameter names and checkpoints stay those of the
        # uncompiled model, and DDP wraps the compiled encoders as any other module.
        for name, child in method.named_children():
            if name.endswith("backbone"):
                child.compile()
    model = ray.train.torch.prepare_model(method)  # DDP across workers; moves to device
    # Fused kernels: one launch per step for all parameters instead of one per tensor.
    optimizer = build_optimizer(config.optim, method, plan.peak_lr, fused=device.type == "cuda")
    rank = ray.train.get_context().get_world_rank()
    worker = Worker(
        config=config,
        plan=plan,
        setup=setup,
        rank=rank,
        device=device,
        precision=resolve_precision(config.train.precision, device),
        memory_format=memory_format,
        method=method,
        model=model,
        optimizer=optimizer,
        tracker=RunTracker(setup.tracking_uri, setup.mlflow_run_id) if rank == 0 else None,
        guard=NonFiniteGuard(config.train.max_nonfinite_steps, config.optim.grad_clip_norm),
        device_views=None,
    )
    if setup.augment_on_device:
        worker.device_views = DeviceViews(config.augment, config.data.channels).to(device)
        # Every rank the same weights (seeded above), but its own augmentation draws.
        torch.manual_seed(config.train.seed + 1 + rank)
    if state is None and setup.init_state is not None:
        # Fine-tuning and distillation: the pretrained encoder (and the teacher) are where
        # training starts (a restart or a --resume takes the checkpoint's weights instead).
        # Every weight given must land: a name the method lacks is a mismatch, not a default.
        unexpected = method.load_state_dict(setup.init_state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"initial weights the {method.name} method has no place for: {sorted(unexpected)[:5]}")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the params' device
        worker.epoch, worker.step = state["epoch"], state["step"]
        if worker.tracker is not None:
            # One point per start from a checkpoint (--resume, or Ray Train restarting after a
            # lost worker): where the run picked up again, in the MLflow run's history.
            worker.tracker.log_metrics({"resumed_from_epoch": worker.epoch}, step=worker.step)
        worker.publish_balance()  # the checkpoint's targets: this run's actor has no weights yet
    return worker


def _say(w: Worker, line: str) -> None:
    """A line for the user's terminal: through the driver's progress board when there is one."""
    board = w.setup.progress_board
    if board is not None:
        board.say.remote(line)
    else:
        print(line, flush=True)


def _baselines(w: Worker) -> None:
    """Before any training: the random-init encoder and, as the bar to clear, raw pixels."""
    if w.tracker.metric_history("knn_top1_init"):
        return  # a restart before the first checkpoint: measured already, same init (seeded)
    top1 = w.knn(w.method.backbone)
    metrics = {"knn_top1": top1, "knn_top1_init": top1}
    line = f"kNN top-1 before training: random-init encoder {100 * top1:.1f}%"
    if w.config.eval.knn_raw_pixels:
        metrics["knn_top1_raw_pixels"] = w.knn(pixels_as_features(), precision="fp32")
        line += f", raw pixels {100 * metrics['knn_top1_raw_pixels']:.1f}%"
    w.tracker.log_metrics(metrics, step=0)
    _say(w, line)


def _train_epoch(w: Worker, shard) -> dict[str, float]:
    config, plan = w.config, w.plan
    final_lr = plan.peak_lr * config.optim.final_lr_fraction
    board = w.setup.progress_board if w.rank == 0 else None
    started, losses, lr, stopped = time.perf_counter(), [], 0.0, False
    recent: list[torch.Tensor] = []  # the epoch's last embeddings, for the collapse monitors
    batches = shard.iter_torch_batches(batch_size=plan.batch_per_worker, drop_last=True, prefetch_batches=2)
    taken = 0  # batches this epoch, skipped ones included
    for batch_index, columns in enumerate(batches):
        if batch_index >= plan.steps_per_epoch:
            break  # every worker stops at the same step, so DDP never waits on a missing peer
        if batch_index % VERDICT_POLL_STEPS == 0 and _stopped_by_sweep(w, wait=False):
            return {STOPPED_BY_SWEEP: float(w.epoch)}  # the rest of this epoch is never reported
        taken += 1
        lr = warmup_cosine(w.step, plan.total_steps, plan.warmup_steps, plan.peak_lr, final_lr)
        for group in w.optimizer.param_groups:
            group["lr"] = plan.peak_lr if group.get("fixed_lr") else lr
        clock = TrainingClock(w.step, plan.total_steps, plan.steps_per_epoch)
        batch = w.method.recipe.to_batch(
            columns,
            w.device,
            device_views=w.device_views,
            memory_format=w.memory_format,
            labels=w.method.uses_labels,
        )
        out = training_step(w.method, w.optimizer, batch, clock, model=w.model, precision=w.precision, guard=w.guard)
        w.step += 1  # a skipped step still uses up its batch and its place in the lr schedule
        if out is None:
            if w.guard.exhausted:
                stopped = True
                break
            continue
        losses.append(out["loss"].detach())
        if w.rank == 0:
            recent = [*recent[-(MONITOR_BATCHES - 1) :], out["embedding"].float()]
        if board is not None and (batch_index % 5 == 0 or batch_index + 1 == plan.steps_per_epoch):
            position = {"epoch": w.epoch + 1, "epochs": config.train.epochs, "step": batch_index + 1}
            board.post.remote({**position, "steps": plan.steps_per_epoch, "loss": out["loss"].item()})
        if w.tracker is not None and w.step % config.train.log_every_steps == 0:
            w.tracker.log_metrics({"loss_step": out["loss"].item(), "lr_step": lr}, step=w.step)
    nonfinite = w.guard.take_skipped()
    if stopped:
        return {"nonfinite_steps": float(nonfinite), STOPPED_NONFINITE: float(w.guard.in_a_row)}
    if not losses and not nonfinite:
        # Not an error to retry: the same files will not decode on a restart either.
        return {STOPPED_NO_BATCH: float(w.epoch + 1)}
    elapsed = time.perf_counter() - started
    mean_loss = torch.stack(losses).mean() if losses else torch.tensor(float("nan"), device=w.device)
    metrics = {
        "loss": all_reduce_mean(mean_loss).item(),
        "nonfinite_steps": float(nonfinite),
        "lr": lr,
        "images_per_s": (len(losses) + nonfinite) * plan.global_batch / elapsed,
        "epoch_time_s": elapsed,
        "steps": float(taken),
    }
    if recent:
        embeddings = torch.cat(recent)
        metrics["collapse_std"] = normalized_std(embeddings)  # ~1/sqrt(D) healthy, 0 collapsed
        metrics["collapse_rank"] = effective_rank(embeddings)
    return metrics


def _report(w: Worker, metrics: dict[str, float]) -> None:
    """Every rank reports; rank 0 adds the checkpoint. The driver's ``EpochMetricsLogger``
    writes the epoch to MLflow once Ray Train has registered the checkpoint (exactly once,
    even if a worker is lost before then and the epoch is trained again)."""
    config = w.config
    last = w.epoch == config.train.epochs
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if w.tracker is not None:
            knn = f", kNN top-1 {100 * metrics['knn_top1']:.1f}%" if "knn_top1" in metrics else ""
            _say(
                w,
                f"epoch {w.epoch}/{config.train.epochs}: loss {metrics['loss']:.3f}{knn}, "
                f"{metrics['images_per_s']:.0f} img/s, {metrics['epoch_time_s']:.0f} s",
            )
            if last or w.epoch % config.train.checkpoint_every_epochs == 0:
                model_state = w.method.state_dict()
                broken = non_finite_tensors(model_state)
                if broken:  # the guard skips bad steps, so this is a bug worth stopping for
                    raise RuntimeError(f"epoch {w.epoch}: not checkpointing non-finite weights: {broken[:5]}")
                state = {
                    "model": model_state,
                    "optimizer": w.optimizer.state_dict(),
                    "epoch": w.epoch,
                    "step": w.step,
                    "steps_per_epoch": w.plan.steps_per_epoch,
                    "total_steps": w.plan.total_steps,
                    "config": w.setup.config,  # what built it: evaluate needs no --config
                }
                save_state(directory, state)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report({**metrics, "epoch": w.epoch}, checkpoint=checkpoint)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's entry point: ``loop_config`` holds the driver's ``WorkerConfig``."""
    setup = WorkerConfig.from_loop_config(loop_config)
    for name in ("ray.data", "ray.train"):  # per-epoch INFO lines would bury the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    w = _start(setup)
    knn = setup.knn
    if w.rank == 0 and w.epoch == 0 and w.config.eval.knn_at_init and knn:
        _baselines(w)
    shard = ray.train.get_dataset_shard("train")
    every = w.config.eval.knn_every_epochs
    while w.epoch < w.config.train.epochs:
        fitted = {}
        if w.method.targets_due(w.epoch):
            fitted = w.fit_targets()
            if w.rank == 0:
                source = w.config.train.fitted_from if w.setup.fitted_state is not None else None
                _say(w, _fitted_line(w.epoch, fitted, source))
        metrics = _train_epoch(w, shard)
        if STOPPED_BY_SWEEP in metrics or _stopped_by_sweep(w, wait=True):
            _say(w, f"epoch {w.epoch}: stopped by the sweep's scheduler")
            break
        if STOPPED_NONFINITE in metrics or STOPPED_NO_BATCH in metrics:
            # No checkpoint: the driver reads this report and fails the run with the reason.
            if STOPPED_NONFINITE in metrics:
                _say(w, f"epoch {w.epoch + 1}: {w.guard.in_a_row} non-finite steps in a row, stopping")
            ray.train.report({**metrics, "epoch": w.epoch + 1})
            return
        w.epoch += 1
        metrics.update(fitted)  # logged with the epoch that trained on them
        _fit_plan_to_the_epoch(w, int(metrics.pop("steps")))
        if w.rank == 0 and knn and (w.epoch == w.config.train.epochs or (every and w.epoch % every == 0)):
            metrics["knn_top1"] = w.knn(w.method.backbone)
            if w.method.classifies:
                metrics["test_top1"] = w.classifier_top1()
        if w.rank == 0 and knn and w.method.illustrates and w.epoch == w.config.train.epochs:
            _illustrate(w)
        counter = setup.skip_counter
        if w.rank == 0 and counter is not None:
            # Every worker has finished the epoch (the loss all-reduce waits for all), so every
            # file of it has been decoded: these are the epoch's skips, per reason, with the
            # files the listing's check had left out of every epoch.
            skipped = Counter(ray.get(counter.take.remote())) + Counter(setup.listing_skips)
            metrics.update({f"skipped_{reason}": float(skipped.get(reason, 0)) for reason in SKIP_REASONS})
        _report(w, metrics)
        if setup.epoch_gate is not None:
            w.verdict_pending = True
            if w.rank == 0:
                w.verdict = setup.epoch_gate.ask(w.epoch)  # answered while the next epoch trains


ILLUSTRATED_IMAGES = 12  # held-out images in the picture a method draws of its work


def _illustrate(w: Worker) -> None:
    """The method's picture of what it does to the first held-out images (``illustrate``), one
    row per kind of image, as a PNG in the run's ``illustrations/``."""
    # The whole pass, not its first batch: a stream left open would hold its tasks' resources.
    batches = [b["image"] for b in _eval_batches("knn_query")]
    images = as_nchw(torch.cat(batches)[:ILLUSTRATED_IMAGES].to(w.device))
    was_training = w.method.training
    w.method.eval()
    try:
        rows = w.method.illustrate(images)
    finally:
        w.method.train(was_training)
    with tempfile.TemporaryDirectory() as directory:
        path = save_image_rows(rows, f"{directory}/{w.method.name}_epoch_{w.epoch}.png")
        w.tracker.log_artifact(path, "illustrations")
    _say(
        w,
        f"epoch {w.epoch}: a picture of the method's work on {len(images)} held-out images in the run's illustrations/",
    )


def _fitted_line(epoch: int, fitted: dict[str, float], source: str | None = None) -> str:
    if source is not None:  # train.fitted_from: nothing fitted here
        said = [f"from {source} (train.fitted_from)"]
    else:
        said = [f"for {int(fitted['targets_fitted_images'])} images"]
    for key, what in (("nmi_labels", "NMI with the labels"), ("nmi_previous", "NMI with the last fit")):
        if key in fitted:
            said.append(f"{what} {fitted[key]:.3f}")
    for key, what in (("colour_bins_used", "ab bins their colours fill"), ("tokenizer_codes_used", "codes in use")):
        if key in fitted:
            said.append(f"{int(fitted[key])} {what}")
    return f"epoch {epoch + 1}: new targets " + ", ".join(said)


def _fit_plan_to_the_epoch(w: Worker, steps: int) -> None:
    """An epoch shorter than planned (files that passed the listing's check but did not decode)
    re-aims the schedule at the length the data really has, the same on every rank (each
    joins the reduction, short or not, so none waits on a peer that returned early)."""
    steps = int(all_reduce_no_grad(torch.tensor([float(steps)], device=w.device), op="min").item())
    if steps >= w.plan.steps_per_epoch:
        return
    before = w.plan.steps_per_epoch
    w.plan = w.plan.with_steps_per_epoch(steps, w.step, w.config.train.epochs - w.epoch)
    if w.rank == 0:
        _say(
            w,
            f"ssl-ray: warning: epoch {w.epoch} gave {steps} full batches where {before} were counted (files that "
            f"did not decode; skipped_* in the run): the schedule now ends at step {w.plan.total_steps}",
        )


def _stopped_by_sweep(w: Worker, wait: bool) -> bool:
    """Whether the sweep's scheduler stopped this trial at the last reported epoch. A trial holds
    an ``epoch_gate`` (``ssl_ray.tune.verdicts.VerdictGate``) its rank 0 asked after reporting;
    ``wait=False`` looks whether the answer is in (mid-epoch), ``wait=True`` waits for it
    (before the next report). Every rank follows rank 0's answer; once it is in, or with no
    question put since the start or the resume, nobody asks again (no collective)."""
    if w.setup.epoch_gate is None or not w.verdict_pending:
        return False
    answer = w.setup.epoch_gate.answer(w.verdict, wait) if w.rank == 0 else None
    said = rank_zero_says({None: _NOT_IN, False: _GO_ON, True: _STOP}[answer], w.device)
    w.verdict_pending = said == _NOT_IN
    return said == _STOP
