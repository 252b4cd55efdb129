"""What a pretraining run from the command line does once it has trained, before its MLflow
run ends: the linear probe on the frozen encoder (``eval.linear_probe_at_end``) and the
encoder registered as an MLflow model. Sweep trials and the evaluation's own fine-tuning runs
do neither, so this sits above the training driver, which never imports the protocols."""

from __future__ import annotations

import numpy as np

from ssl_ray.eval.encoders import TrainedEncoder
from ssl_ray.eval.evaluate import EvaluateOptions, evaluate
from ssl_ray.nn.backbones import build_encoder
from ssl_ray.tracking.model import log_encoder_model
from ssl_ray.train.trainer import TrainedRun


def register_encoder(run: TrainedRun) -> None:
    """The encoder (the backbone, with any head layers it keeps) as an MLflow PyTorch model,
    registered (``tracking.registered_model``)."""
    config = run.config
    channels, size = config.data.channels, config.augment.image_size
    encoder, _ = build_encoder(
        config.model, channels, size, config.encoder_head, config.colour_split, config.patch_grid
    )
    encoder.load_state_dict(run.weights)
    example = np.random.default_rng(0).integers(0, 256, (2, channels, size, size), dtype=np.uint8)
    name = config.tracking.registered_model or f"{config.run_prefix}-encoder"
    uri = log_encoder_model(run.tracking_uri, run.tracker.run_id, encoder, example, name)
    run.tracker.set_tag("ssl_ray.registered_model", name)
    run.tracker.set_tag("ssl_ray.model_uri", uri)


def probe_at_end(run: TrainedRun) -> None:
    """The linear probe (and kNN at k 10/20/200) on the trained encoder, into this run, on the
    kNN monitor's own bank and queries (the same samples: ``train.seed``)."""
    config = run.config
    options = EvaluateOptions(
        baselines=False,
        diagnostics=False,
        train_size=config.eval.knn_bank_size,
        test_size=config.eval.knn_query_size,
        seed=config.train.seed,
    )
    encoder = TrainedEncoder(run.weights, config, run.tracker.run_id, run.tracker.run_id)
    evaluation = evaluate(encoder, options, run.tracking_uri)
    print(f"Linear probe at the end (frozen encoder):\n{evaluation.table()}", flush=True)


def finish_pretraining(run: TrainedRun) -> None:
    """Registration (unless ``tracking.register_model`` is false), then the probe if asked."""
    if run.config.tracking.register_model:
        register_encoder(run)
    if run.config.eval.linear_probe_at_end and run.labelled_eval:
        probe_at_end(run)
