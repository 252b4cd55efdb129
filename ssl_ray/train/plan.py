"""Values derived from a frozen config and the dataset size, computed once, never written back."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ssl_ray.config import PipelineConfig


@dataclass(frozen=True)
class TrainingPlan:
    global_batch: int
    batch_per_worker: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float

    @classmethod
    def from_config(cls, config: PipelineConfig, train_size: int) -> TrainingPlan:
        t, o = config.train, config.optim
        steps = train_size // t.batch_size
        if steps == 0:
            raise ValueError(f"train.batch_size ({t.batch_size}) is larger than the training set ({train_size} images)")
        if t.max_steps_per_epoch:
            steps = min(steps, t.max_steps_per_epoch)
        scale = {"linear": t.batch_size / 256, "sqrt": math.sqrt(t.batch_size / 256), "none": 1.0}[o.lr_scaling]
        return cls(
            global_batch=t.batch_size,
            batch_per_worker=t.batch_size // t.num_workers,
            steps_per_epoch=steps,
            total_steps=steps * t.epochs,
            warmup_steps=round(o.warmup_epochs * steps),
            peak_lr=o.base_lr * scale,
        )
