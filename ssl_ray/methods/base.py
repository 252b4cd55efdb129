"""What every SSL method is: an encoder, its heads, and a loss over a batch of views."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ssl_ray.nn.backbones import build_backbone
from ssl_ray.nn.momentum import deactivate_requires_grad, update_momentum

if TYPE_CHECKING:
    from ssl_ray.config import PipelineConfig


class SSLMethod(nn.Module):
    """Subclasses add their heads and implement ``forward(views) -> {"loss": ..., "embedding": ...}``:
    the loss to minimise and one view's embeddings (N, D) for the collapse monitors.

    ``views`` is a list of image batches, one per view, each (N, C, H, W) float. The encoder
    (``self.backbone``) is what is kept, evaluated and exported after pretraining.
    """

    name: str = ""
    # The paper's hyperparameters: ``method.*`` fields a config leaves out take these values.
    defaults: ClassVar[dict[str, Any]] = {}
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

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.feature_dim = build_backbone(
            config.model.backbone,
            config.data.channels,
            config.model.width,
            config.model.blocks,
            config.model.stem_stride,
            config.model.stem,
        )

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

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Hook after each optimiser step (EMA targets, queues); nothing by default."""
