"""Values derived from a frozen config and the dataset size, computed once, never written back."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
    def from_config(cls, config: PipelineConfig, train_size: int, where: str = "the training set") -> TrainingPlan:
        """``train_size``: the images an epoch will see (counted after the listing's check)."""
        t, o = config.train, config.optim
        steps = train_size // t.batch_size
        if steps == 0:
            raise ValueError(
                f"train.batch_size ({t.batch_size}) is larger than {where} ({train_size} decodable images)"
            )
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

    def with_steps_per_epoch(self, steps_per_epoch: int, step: int, epochs_left: int) -> TrainingPlan:
        """The plan once an epoch has come out shorter than counted (files that passed the
        listing's check but did not decode): the schedule re-aimed to end, at ``step`` plus
        ``epochs_left`` epochs of the new length, where it was meant to end (near 0), rather than
        stopping part way down a schedule computed for steps that never come."""
        return replace(self, steps_per_epoch=steps_per_epoch, total_steps=step + steps_per_epoch * epochs_left)
