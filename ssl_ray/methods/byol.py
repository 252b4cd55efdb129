"""BYOL (Grill et al. 2020): the online network (encoder, projector, predictor) predicts the
projection of an EMA target network (encoder, projector) of the other view. Paper defaults:
projector and predictor 4096 -> 256, target momentum 0.996 -> 1 along a cosine (Sec. 3.2)."""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import MomentumTarget, Predictor, Projector
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.heads import mlp
from ssl_ray.nn.losses import NegativeCosineLoss
from ssl_ray.views.recipe import Batch


@register_method("byol")
class BYOL(SSLMethod):
    class Params(Projector, Predictor, MomentumTarget):
        projection_hidden_dim: int = Field(default=4096, gt=0)
        projection_dim: int = Field(default=256, gt=0)
        predictor_hidden_dim: int = Field(default=4096, gt=0)
        ema_momentum: float = Field(default=0.996, ge=0.0, le=1.0)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        self.projector = mlp([self.feature_dim, m.projection_hidden_dim, m.projection_dim])
        self.predictor = mlp([m.projection_dim, m.predictor_hidden_dim, m.projection_dim])
        self.add_targets("backbone", "projector", momentum=m.ema_momentum, schedule="cosine")  # Sec. 3.2
        self.criterion = NegativeCosineLoss()

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        n = batch.size
        both = torch.cat(batch.views)
        z = self.projector(self.backbone(both))
        p = self.predictor(z)
        with torch.no_grad():
            target = self.target_projector(self.target_backbone(both))
        # Eq. 2, symmetrised (Sec. 3.1): 2 - 2 cos(p, z') = 2 + 2 D(p, z') for each view order.
        loss = (2 + 2 * self.criterion(p[:n], target[n:])) + (2 + 2 * self.criterion(p[n:], target[:n]))
        return {"loss": loss, "embedding": z[:n].detach()}
