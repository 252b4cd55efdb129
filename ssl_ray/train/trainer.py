"""The driver: validate -> datasets -> MLflow run -> TorchTrainer.fit() -> encoder artifact."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.data
import torch
import yaml
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ssl_ray.config import ConfigError, PipelineConfig
from ssl_ray.console import start_ray
from ssl_ray.data.balance import ClassBalance
from ssl_ray.data.errors import DataSourceError, warn
from ssl_ray.data.skips import SkipCounter
from ssl_ray.data.sources import PretrainData, build_pretrain_data, check_data_locations
from ssl_ray.methods import METHODS
from ssl_ray.methods.params import Labelled, PerSample
from ssl_ray.monitors.knn import k_for_bank
from ssl_ray.tracking.epoch_log import EpochMetricsLogger
from ssl_ray.tracking.fitted import FittedSourceError, load_fitted
from ssl_ray.tracking.mlflow_run import RunTracker, resolve_tracking_uri
from ssl_ray.tracking.plots import plot_curves
from ssl_ray.train.build import build_method
from ssl_ray.train.checkpoint import encoder_state, load_state
from ssl_ray.train.guard import NonFiniteLossError
from ssl_ray.train.loop import STOPPED_NO_BATCH, STOPPED_NONFINITE, TRAINING_IMAGES, train_loop_per_worker
from ssl_ray.train.plan import TrainingPlan
from ssl_ray.train.progress import ProgressBoard, ProgressPrinter
from ssl_ray.train.storage import RunStorage, fresh_run_name, latest_run_name, run_exists
from ssl_ray.train.worker_config import WorkerConfig


@dataclass(frozen=True)
class PretrainResult:
    ray_run_name: str
    mlflow_run_id: str
    mlflow_experiment_id: str
    tracking_uri: str
    knn_top1_init: float | None
    knn_top1_raw_pixels: float | None
    knn_top1: float | None
    epochs_done: int
    checkpoint_path: str | None
    test_top1: float | None = None  # label-trained methods: their classifier on the test images
    knn_k: int | None = None  # the k the kNN monitor used (eval.knn_k, or the bank's smallest class)


class ResumeError(RuntimeError):
    pass


def _use_gpu(config: PipelineConfig) -> bool:
    if config.train.use_gpu == "auto":
        return bool(ray.cluster_resources().get("GPU", 0))
    return bool(config.train.use_gpu)


def _sized_by_the_data(config: PipelineConfig, data: PretrainData) -> PipelineConfig:
    """What a method sizes by the data, set before any worker starts: a label-trained method's
    class count (data without labels is refused), a per-image memory's rows (the training
    set's size: every ``sample_index`` is below it). A size the pipeline gives is kept, and
    checked: a memory smaller than the data would be indexed past its end. A method may refuse
    the data's size outright (``data_refusal``: DeepCluster's clusters need images)."""
    method, sized = config.method, {}
    refusal = METHODS[method.name].data_refusal(method, data.train_size)
    if refusal:
        raise ConfigError(refusal)
    if METHODS[method.name].uses_labels:
        if data.num_classes < 2:
            raise ConfigError(f"method {method.name} trains on labels, and {config.data.path} has none")
        if isinstance(method, Labelled) and method.num_classes is None:
            sized["num_classes"] = data.num_classes
    if isinstance(method, PerSample):
        if method.num_samples is None:
            sized["num_samples"] = data.train_size
        elif method.num_samples < data.train_size:
            raise ConfigError(
                f"method.num_samples: {method.num_samples} is fewer than the {data.train_size} training images "
                "(leave it unset: it is the data's)"
            )
    return config.model_copy(update={"method": method.model_copy(update=sized)}) if sized else config


def _fit_to_the_data(config: PipelineConfig, data: PretrainData) -> int:
    """Checks of the config against the data as it decodes, before any worker starts: the batch
    must fit the training set, and kNN's k the bank's smallest class (clipped, with a warning).
    Returns the k the kNN monitor uses."""
    where = "the training set" if config.data.source == "fashion_mnist" else f"the training set at {config.data.path}"
    if data.listing_skips:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(data.listing_skips.items()))
        warn(
            f"{config.data.path}: {sum(data.listing_skips.values())} files are left out ({reasons}); {data.train_size} remain"
        )
    try:
        TrainingPlan.from_config(config, data.train_size, where)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    k = config.eval.knn_k
    if data.bank_labels is not None:
        k = k_for_bank(k, data.bank_labels)
        if k < config.eval.knn_k:
            warn(f"eval.knn_k {config.eval.knn_k} is more than the kNN bank's smallest class: using k={k}")
    return k


@dataclass(frozen=True)
class TrainedRun:
    """What the layer above may do more with once a run has trained (the end-of-run probe,
    registering the encoder), before its MLflow run is ended."""

    config: PipelineConfig
    tracker: RunTracker
    tracking_uri: str
    weights: dict[str, torch.Tensor]  # the encoder's, from the last checkpoint
    model_state: dict[str, torch.Tensor]  # the whole method's (a fine-tuned classifier too)
    labelled_eval: bool  # the run had labelled held-out images (kNN bank and queries)


def _sync_batchnorm(config: PipelineConfig, use_gpu: bool) -> bool:
    wanted = config.train.sync_batchnorm
    if wanted is True and not use_gpu:
        # torch's SyncBatchNorm runs on CUDA only; say so before any worker starts.
        raise ConfigError("train.sync_batchnorm=true needs GPU workers (use auto or false on CPUs)")
    if wanted == "auto":
        return use_gpu and config.train.num_workers > 1 and METHODS[config.method.name].sync_batchnorm
    return bool(wanted)


@dataclass(frozen=True)
class SweepTrial:
    """What a sweep's trial adds to a pretraining run: the MLflow parent it nests under, tags
    naming the trial, and the callbacks that pass each epoch's metrics on to Ray Tune."""

    parent_run_id: str
    tags: dict[str, str]
    callbacks: tuple = ()
    epoch_gate: object | None = None  # asked after each epoch whether the sweep stopped the trial


@dataclass
class _Run:
    """One pretraining run as the driver's steps build it up."""

    config: PipelineConfig
    tracking_uri: str
    storage: RunStorage
    name: str
    tracker: RunTracker | None  # None until the MLflow run is started (a resume finds it)
    use_gpu: bool = False
    augment_on_device: bool = False
    skips: object | None = None  # the SkipCounter actor of file sources
    balance: object | None = None  # the ClassBalance actor of a method that fits targets
    data: PretrainData | None = None
    knn_k: int | None = None
    board: object | None = None  # the ProgressBoard actor the workers post their progress to
    fitted: dict[str, torch.Tensor] | None = None  # train.fitted_from's tensors


def run_pretraining(
    config: PipelineConfig,
    resume: bool | str = False,
    trial: SweepTrial | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    parent_run_id: str | None = None,
    after_training: Callable[[TrainedRun], None] | None = None,
) -> PretrainResult:
    """``resume``: False (fresh run), True (the newest run of this config's name) or a run name.
    ``init_state``: weights to start from, by the method's state names (fine-tuning's
    ``backbone.*``, a distillation's teacher too); ``parent_run_id``: the MLflow
    run this one nests under (an evaluation's fine-tuning runs under the pretraining's);
    ``after_training``: called with the trained run before its MLflow run ends (the
    command line's end-of-run probe and model registration)."""
    _check_given_state(config, init_state, resume)
    run = _locate(config, resume)  # storage, data locations and a resumed run checked before Ray starts
    if not resume:  # a checkpoint holds its run's fit
        run.fitted = read_fitted_from(config, run.tracking_uri)
    _start_ray(config)
    _prepare_data(run)
    _open_tracking(run, parent_run_id=trial.parent_run_id if trial else parent_run_id, trial=trial)
    trainer = _trainer(run, init_state, trial)
    try:
        with ProgressPrinter(run.board, show_bar=sys.stdout.isatty() and trial is None):
            result = trainer.fit()
        _fail_on_a_stop(run)
        model_state = _log_outcome(run, result)
        if after_training is not None and model_state is not None:
            weights, labelled = encoder_state({"model": model_state}), run.data.knn_bank is not None
            after_training(TrainedRun(run.config, run.tracker, run.tracking_uri, weights, model_state, labelled))
    except BaseException:
        run.tracker.end("FAILED")
        raise
    stopped_early = trial is not None and len(run.tracker.metric_history("loss")) < run.config.train.epochs
    if stopped_early:  # the sweep's scheduler stopped it
        run.tracker.set_tag("ssl_ray.stopped_early", "true")
    run.tracker.end("KILLED" if stopped_early else "FINISHED")
    return _result(run, result)


def _check_given_state(config: PipelineConfig, init_state: dict | None, resume: bool | str) -> None:
    """A method that learns from weights it is given (distillation's teacher) is refused
    without them, before anything starts; a resume finds them in its checkpoint."""
    method = METHODS[config.method.name]
    given = {key.split(".", 1)[0] for key in init_state or {}}
    missing = [part for part in method.given_state if part not in given]
    if missing and not resume:
        raise ConfigError(f"method.name: {config.method.name} {method.given_state_why}")


def read_fitted_from(config: PipelineConfig, tracking_uri: str) -> dict[str, torch.Tensor] | None:
    """``train.fitted_from``'s tensors, checked against what the configured method fits (the
    names and shapes of its ``fitted_buffers``) before Ray starts."""
    source, name = config.train.fitted_from, config.method.name
    if source is None:
        return None
    wanted = METHODS[name].fitted_buffers
    if not wanted:
        raise ConfigError(
            f"train.fitted_from: method {name} fits nothing once before training that a run could give it"
        )
    try:
        given = load_fitted(source, name, tracking_uri)
    except FittedSourceError as error:
        raise ConfigError(f"train.fitted_from: {error}") from None
    here = dict(build_method(config).named_buffers())
    for buffer in wanted:
        if buffer not in given:
            raise ConfigError(f"train.fitted_from: {source} holds no {buffer} (it holds {', '.join(sorted(given))})")
        if given[buffer].shape != here[buffer].shape:
            raise ConfigError(
                f"train.fitted_from: {buffer} is {tuple(given[buffer].shape)} in {source} and "
                f"{tuple(here[buffer].shape)} here (this pipeline's method or model settings are not that run's)"
            )
    return {buffer: given[buffer].to(here[buffer].dtype) for buffer in wanted}


def _locate(config: PipelineConfig, resume: bool | str) -> _Run:
    """Where the run's checkpoints go and its data come from, checked; with ``resume``, the
    run to resume and its MLflow run, found."""
    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
    storage = RunStorage.resolve(config.train.storage_path, config.storage)
    storage.check(config.storage)
    check_data_locations(config)  # a bad bucket or an empty prefix fails here, before Ray starts
    if not resume:
        return _Run(config, tracking_uri, storage, fresh_run_name(config.run_prefix), tracker=None)
    name = resume if isinstance(resume, str) else latest_run_name(storage.url, config.run_prefix, config.storage)
    if name is None:
        raise ResumeError(f"nothing to resume: no run named {config.run_prefix}-* under {storage.url}")
    if isinstance(resume, str) and not run_exists(storage.url, name, config.storage):
        # Said before any MLflow call, which would create ./mlflow.db for a typo.
        raise ResumeError(f"nothing to resume: no run {name} under {storage.url} (train.storage_path)")
    tracker = RunTracker.find(tracking_uri, config.tracking.experiment, name)
    if tracker is None:
        raise ResumeError(f"no MLflow run tagged with Ray run {name} in {tracking_uri}")
    tracker.set_running()
    return _Run(config, tracking_uri, storage, name, tracker)


def _start_ray(config: PipelineConfig) -> None:
    if not ray.is_initialized():
        env = {}
        if config.train.threads_per_worker:
            # Ray sets OMP_NUM_THREADS to a task's CPU count, which would contradict the
            # thread count asked for; start workers with the count they will use (a 1.05x
            # median gain here, benchmarks/README.md; mostly it keeps the settings honest).
            env["OMP_NUM_THREADS"] = str(config.train.threads_per_worker)
        start_ray(runtime_env={"env_vars": env} if env else None)
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False  # our own per-epoch bar says what matters
    data_context.print_on_execution_start = False


def _prepare_data(run: _Run) -> None:
    """The datasets, and the config fitted to them (classes, batch, k) before any worker starts."""
    config = run.config
    run.use_gpu = _use_gpu(config)
    run.augment_on_device = config.augment.on == "device" or (config.augment.on == "auto" and run.use_gpu)
    run.skips = SkipCounter.remote() if config.data.source != "fashion_mnist" else None
    method = METHODS[config.method.name]
    fits_targets = method.fits_targets
    # A method that fits targets embeds every training image for each fit; one balanced over
    # them draws its images uniformly over their classes, by the weights its loop publishes here.
    run.balance = ClassBalance.remote() if fits_targets and method.balanced_over_targets else None
    run.data = build_pretrain_data(
        config,
        counter=run.skips,
        augment_on_device=run.augment_on_device,
        balance=run.balance,
        whole_training_set=fits_targets,
    )
    run.config = _sized_by_the_data(config, run.data)
    run.knn_k = _fit_to_the_data(run.config, run.data)


def _open_tracking(run: _Run, parent_run_id: str | None, trial: SweepTrial | None) -> None:
    """A fresh run's MLflow run (a resumed one has its own already), with the few-label subset."""
    if run.tracker is not None:
        return
    tags = trial.tags if trial else None
    run.tracker = RunTracker.start(run.tracking_uri, run.config, run.name, parent_run_id=parent_run_id, tags=tags)
    if run.data.label_subset is not None:
        with tempfile.TemporaryDirectory() as out:
            # Which images the few labels are: indices into the training set, or files.
            (Path(out) / "label_subset.txt").write_text("\n".join(run.data.label_subset) + "\n")
            run.tracker.log_artifact(Path(out) / "label_subset.txt", "labels")


def _trainer(run: _Run, init_state: dict[str, torch.Tensor] | None, trial: SweepTrial | None) -> TorchTrainer:
    config, data = run.config, run.data
    run.board = ProgressBoard.remote()
    worker = WorkerConfig(
        config=config.model_dump(mode="json"),
        tracking_uri=run.tracking_uri,
        mlflow_run_id=run.tracker.run_id,
        train_size=data.train_size,
        num_classes=data.num_classes,
        knn=data.knn_bank is not None,
        knn_k=run.knn_k,
        sync_batchnorm=_sync_batchnorm(config, run.use_gpu),
        augment_on_device=run.augment_on_device,
        listing_skips=data.listing_skips,
        init_state=init_state,
        fitted_state=run.fitted,
        skip_counter=run.skips,
        progress_board=run.board,
        epoch_gate=trial.epoch_gate if trial else None,
        class_balance=run.balance,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker.as_loop_config(),
        scaling_config=ScalingConfig(
            num_workers=config.train.num_workers,
            use_gpu=run.use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker, **({"GPU": 1} if run.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run.name,
            storage_path=run.storage.path,
            storage_filesystem=run.storage.filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=2),
            callbacks=[EpochMetricsLogger(run.tracking_uri, run.tracker.run_id), *(trial.callbacks if trial else ())],
        ),
        datasets={
            "train": data.train,
            **({"knn_bank": data.knn_bank, "knn_query": data.knn_query} if data.knn_bank is not None else {}),
            **({TRAINING_IMAGES: data.training_images} if data.training_images is not None else {}),
        },
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def _fail_on_a_stop(run: _Run) -> None:
    """A run the workers stopped (no full batch, non-finite steps) fails with the reason.
    Ray Train's result carries the last checkpointed report; the stop has none, so it is read
    from the MLflow run, where the epoch logger put it."""
    config, tracker = run.config, run.tracker
    if tracker.metric_history(STOPPED_NO_BATCH):
        epoch = int(tracker.metric_history(STOPPED_NO_BATCH)[-1][1])
        message = (
            f"{config.data.path}: epoch {epoch} gave no full batch of train.batch_size={config.train.batch_size} "
            "images: fewer files decode than the listing's check counted (skipped_* in the run); lower train.batch_size"
        )
        tracker.set_tag("ssl_ray.failure", message)
        raise DataSourceError(message)
    stopped = tracker.metric_history(STOPPED_NONFINITE)
    if stopped:
        epoch, in_a_row = stopped[-1][0], int(stopped[-1][1])
        message = (
            f"stopped in epoch {epoch}: {in_a_row} steps in a row had a NaN or infinite "
            f"loss or gradient (train.max_nonfinite_steps={config.train.max_nonfinite_steps}); no checkpoint "
            "was written from them. Try a lower optim.base_lr, optim.grad_clip_norm, or train.precision=fp32."
        )
        tracker.set_tag("ssl_ray.failure", message)
        raise NonFiniteLossError(message)


def _log_outcome(run: _Run, result) -> dict[str, torch.Tensor] | None:
    """The encoder's weights, the config and the curves into the MLflow run; returns the
    method's whole state from the last checkpoint (None without one)."""
    tracker, model_state = run.tracker, None
    init = dict(tracker.metric_history("knn_top1_init")).get(0)
    raw = dict(tracker.metric_history("knn_top1_raw_pixels")).get(0)
    with tempfile.TemporaryDirectory() as out:
        out = Path(out)
        if result.checkpoint is not None:
            tracker.set_tag("ssl_ray.checkpoint", run.storage.display(result.checkpoint.path))
            with result.checkpoint.as_directory() as directory:
                model_state = load_state(directory)["model"]
            torch.save(encoder_state({"model": model_state}), out / "encoder.pt")
            tracker.log_artifact(out / "encoder.pt", "encoder")
        (out / "config.yaml").write_text(yaml.safe_dump(run.config.model_dump(mode="json"), sort_keys=False))
        tracker.log_artifact(out / "config.yaml")
        baselines = {name: value for name, value in (("random init", init), ("raw pixels", raw)) if value is not None}
        loss, knn = tracker.metric_history("loss"), tracker.metric_history("knn_top1")
        plot_curves(out / "curves.png", loss, knn, baselines, run.name)
        tracker.log_artifact(out / "curves.png", "plots")
    return model_state


def _result(run: _Run, result) -> PretrainResult:
    tracker = run.tracker
    trained = [value for step, value in tracker.metric_history("knn_top1") if step > 0]
    test_top1 = tracker.metric_history("test_top1")  # label-trained methods' classifier
    return PretrainResult(
        ray_run_name=run.name,
        mlflow_run_id=tracker.run_id,
        mlflow_experiment_id=tracker.experiment_id,
        tracking_uri=run.tracking_uri,
        knn_top1_init=dict(tracker.metric_history("knn_top1_init")).get(0),
        knn_top1_raw_pixels=dict(tracker.metric_history("knn_top1_raw_pixels")).get(0),
        knn_top1=trained[-1] if trained else None,
        epochs_done=len(tracker.metric_history("loss")),
        checkpoint_path=run.storage.display(result.checkpoint.path) if result.checkpoint is not None else None,
        test_top1=test_top1[-1][1] if test_top1 else None,
        knn_k=run.knn_k,
    )
