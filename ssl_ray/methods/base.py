"""What every SSL method is: an encoder, its heads, and a loss over a batch of views."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ssl_ray.methods.params import MethodParams
from ssl_ray.nn.backbones import build_encoder
from ssl_ray.nn.momentum import deactivate_requires_grad, update_momentum

if TYPE_CHECKING:
    from ssl_ray.config import PipelineConfig


@dataclass(frozen=True)
class TrainingClock:
    """Where training stands: the global step being taken, and the run's length. The loop sets
    it before every step; methods compute their schedules from it (EMA momentum, DINO's teacher
    temperature), so a resumed run lands on the same values."""

    step: int = 0
    total_steps: int = 1
    steps_per_epoch: int = 1

    @property
    def in_first_epoch(self) -> bool:
        return self.step < self.steps_per_epoch


class SSLMethod(nn.Module):
    """Subclasses add their heads and implement ``forward(views) -> {"loss": ..., "embedding": ...}``:
    the loss to minimise and one view's embeddings (N, D) for the collapse monitors.

    ``views`` is a list of image batches, one per view, each (N, C, H, W) float: the global
    crops first, then any local crops (smaller). The encoder (``self.backbone``) is what is
    kept, evaluated and exported after pretraining.
    """

    name: str = ""
    # The method's hyperparameters (``method.*``) with its paper's defaults.
    Params: ClassVar[type[MethodParams]] = MethodParams
    # Whether it takes more than two views: several global crops and smaller local ones
    # (``augment.global_crops``, ``augment.local_crops``). Two-view methods take exactly two.
    multi_crop: ClassVar[bool] = False
    # Submodules whose gradients are dropped during the first epoch (SwAV's prototypes, DINO's
    # last layer): their optimiser step is skipped while the rest of the network settles.
    frozen_in_first_epoch: ClassVar[tuple[str, ...]] = ()
    # Submodules trained at the peak learning rate throughout (SimSiam's predictor).
    fixed_lr_modules: tuple[str, ...] = ()
    # Online submodules that have an EMA copy ``target_<name>`` (set by ``add_targets``).
    target_of: tuple[str, ...] = ()
    # Whether BatchNorm should see the global batch on several GPU workers (SyncBN, as the
    # papers train); False where the method has its own answer (MoCo v1/v2's shuffled BN).
    sync_batchnorm: ClassVar[bool] = True
    # Whether ``forward`` takes the batch's labels (``forward(views, labels)``): supervised
    # training and fine-tuning; the data source must then have labels.
    uses_labels: ClassVar[bool] = False
    # Whether it has a classifier, ``logits(images)``: the loop then reports its test top-1.
    classifies: ClassVar[bool] = False

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        self.config = config
        self.clock = TrainingClock()
        self.backbone, self.feature_dim = build_encoder(config.model, config.data.channels, config.augment.image_size)

    def add_targets(self, *names: str) -> None:
        """Momentum targets of the named online submodules, starting as exact copies: MoCo's
        key encoder, BYOL's target network. They change only through ``update_targets``."""
        for name in names:
            setattr(self, f"target_{name}", deactivate_requires_grad(copy.deepcopy(getattr(self, name))))
        self.target_of = names

    @torch.no_grad()
    def update_targets(self, momentum: float) -> None:
        for name in self.target_of:
            update_momentum(getattr(self, name), getattr(self, f"target_{name}"), momentum)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def drop_frozen_gradients(self) -> None:
        """Before the optimiser step: no update (not even weight decay) for the submodules
        frozen in the first epoch, as the reference codes do by setting their gradients to None."""
        if not self.clock.in_first_epoch:
            return
        for name in self.frozen_in_first_epoch:
            for parameter in self.get_submodule(name).parameters():
                parameter.grad = None

    @torch.no_grad()
    def after_step(self) -> None:
        """Hook after each optimiser step (EMA targets, queues, centres); ``self.clock`` says
        which step it was. Nothing by default."""
