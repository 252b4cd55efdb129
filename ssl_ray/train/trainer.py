"""The driver: validate -> datasets -> MLflow run -> TorchTrainer.fit() -> encoder artifact."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.data
import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ssl_ray.config import PipelineConfig
from ssl_ray.data.sources import build_pretrain_data
from ssl_ray.tracking.mlflow_run import RunTracker, resolve_tracking_uri
from ssl_ray.train.checkpoint import encoder_state, load_state
from ssl_ray.train.loop import train_loop_per_worker
from ssl_ray.train.storage import fresh_run_name, latest_run_name, normalise_storage_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainResult:
    ray_run_name: str
    mlflow_run_id: str
    tracking_uri: str
    knn_top1_init: float | None
    knn_top1: float | None
    epochs_done: int
    checkpoint_path: str | None


class ResumeError(RuntimeError):
    pass


def _use_gpu(config: PipelineConfig) -> bool:
    if config.train.use_gpu == "auto":
        return bool(ray.cluster_resources().get("GPU", 0))
    return bool(config.train.use_gpu)


def run_pretraining(config: PipelineConfig, resume: bool | str = False) -> PretrainResult:
    """``resume``: False (fresh run), True (the newest run of this config's name) or a run name."""
    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
    storage_path = normalise_storage_path(config.train.storage_path)
    if resume:
        run_name = resume if isinstance(resume, str) else latest_run_name(storage_path, config.run_prefix)
        if run_name is None:
            raise ResumeError(f"nothing to resume: no run named {config.run_prefix}-* under {storage_path}")
        tracker = RunTracker.find(tracking_uri, config.tracking.experiment, run_name)
        if tracker is None:
            raise ResumeError(f"no MLflow run tagged with Ray run {run_name} in {tracking_uri}")
        tracker.set_running()
    else:
        run_name = fresh_run_name(config.run_prefix)
        tracker = None

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    data = build_pretrain_data(config)
    if tracker is None:
        tracker = RunTracker.start(tracking_uri, config, run_name)

    use_gpu = _use_gpu(config)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "train_size": data.train_size,
            "num_classes": data.num_classes,
            "num_views": 2,
            "tracking_uri": tracking_uri,
            "mlflow_run_id": tracker.run_id,
        },
        scaling_config=ScalingConfig(
            num_workers=config.train.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=2),
        ),
        datasets={"train": data.train, "knn_bank": data.knn_bank, "knn_query": data.knn_query},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    try:
        result = trainer.fit()
    except BaseException:
        tracker.end("FAILED")
        raise

    checkpoint_path = None
    if result.checkpoint is not None:
        checkpoint_path = result.checkpoint.path
        with result.checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as out:
            state = load_state(directory)
            encoder_file = Path(out) / "encoder.pt"
            torch.save(encoder_state(state), encoder_file)
            tracker.log_artifact(encoder_file, "encoder")
            (Path(out) / "config.yaml").write_text(_yaml(config))
            tracker.log_artifact(Path(out) / "config.yaml")
    tracker.end("FINISHED")
    init = tracker.metric_history("knn_top1_init")
    final = tracker.metric_history("knn_top1")
    epochs = tracker.metric_history("loss")
    return PretrainResult(
        ray_run_name=run_name,
        mlflow_run_id=tracker.run_id,
        tracking_uri=tracking_uri,
        knn_top1_init=init[0] if init else None,
        knn_top1=final[-1] if len(final) > (1 if init else 0) else None,
        epochs_done=len(epochs),
        checkpoint_path=checkpoint_path,
    )


def _yaml(config: PipelineConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
