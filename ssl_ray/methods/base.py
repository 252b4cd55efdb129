"""What every SSL method is: an encoder, its heads, and a loss over a batch of views."""

from __future__ import annotations

import torch
from torch import nn

from ssl_ray.config import PipelineConfig
from ssl_ray.nn.backbones import build_backbone


class SSLMethod(nn.Module):
    """Subclasses add their heads and implement ``forward(views) -> {"loss": ..., "embedding": ...}``:
    the loss to minimise and one view's embeddings (N, D) for the collapse monitors.

    ``views`` is a list of image batches, one per view, each (N, C, H, W) float. The encoder
    (``self.backbone``) is what is kept, evaluated and exported after pretraining.
    """

    name: str = ""
    # Submodules trained at the peak learning rate throughout (SimSiam's predictor).
    fixed_lr_modules: tuple[str, ...] = ()

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.feature_dim = build_backbone(
            config.model.backbone,
            config.data.channels,
            config.model.width,
            config.model.blocks,
            config.model.stem_stride,
        )

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Hook after each optimiser step (EMA targets, queues); nothing by default."""
