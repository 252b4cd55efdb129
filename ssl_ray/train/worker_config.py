"""What the driver hands every Ray Train worker: one frozen, typed object (Ray Train passes it
inside its ``train_loop_config`` dict, under one key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

KEY = "worker"


@dataclass(frozen=True)
class WorkerConfig:
    config: dict[str, Any]  # the pipeline, as JSON: checkpoints carry it, evaluate needs no --config
    tracking_uri: str
    mlflow_run_id: str
    train_size: int  # images an epoch will see, counted after the listing's check
    num_classes: int
    knn: bool  # labelled held-out images exist: the kNN monitor (and a classifier's top-1) runs
    knn_k: int  # eval.knn_k fitted to the bank's smallest class
    sync_batchnorm: bool = False
    augment_on_device: bool = False  # the colour part of the views runs in the loop
    listing_skips: dict[str, int] = field(default_factory=dict)  # left out of every epoch, per reason
    # Where a fresh run starts, as names of the method's state (fine-tuning's pretrained
    # ``backbone.*``; a distillation's student and ``teacher.*``); a checkpoint overrides it.
    init_state: dict[str, torch.Tensor] | None = None
    # ``train.fitted_from``'s tensors, by the method's ``fitted_buffers``: adopted in place of
    # the fit a fresh run makes before epoch 1 (a checkpoint holds its own).
    fitted_state: dict[str, torch.Tensor] | None = None
    # Actor handles: decode skips, the driver's console, a sweep's verdicts, the training
    # images' sampling weights (``data.balance.ClassBalance``, for a method that fits targets).
    skip_counter: Any = None
    progress_board: Any = None
    epoch_gate: Any = None
    class_balance: Any = None

    def as_loop_config(self) -> dict[str, Any]:
        return {KEY: self}

    @staticmethod
    def from_loop_config(loop_config: dict[str, Any]) -> WorkerConfig:
        return loop_config[KEY]
