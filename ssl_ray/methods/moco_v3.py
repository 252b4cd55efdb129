"""MoCo v3 (Chen, Xie & He 2021): no queue; each view's query (after a predictor) is
contrasted with the momentum encoder's keys of the other view across the whole batch.

Paper defaults for ResNets: projector 2-layer MLP 4096 -> 256 with BN on its output,
predictor 2-layer MLP 4096 -> 256, temperature 1.0, key momentum 0.99 -> 1 along a cosine."""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import MomentumTarget, Predictor, Projector, Temperature
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.heads import mlp
from ssl_ray.nn.losses import InfoNCELoss
from ssl_ray.views.recipe import Batch


@register_method("moco_v3")
class MoCoV3(SSLMethod):
    class Params(Projector, Predictor, MomentumTarget, Temperature):
        temperature: float = Field(default=1.0, gt=0.0)
        projection_hidden_dim: int = Field(default=4096, gt=0)
        projection_dim: int = Field(default=256, gt=0)
        predictor_hidden_dim: int = Field(default=4096, gt=0)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        self.projector = mlp([self.feature_dim, m.projection_hidden_dim, m.projection_dim], last_bn=True)
        self.predictor = mlp([m.projection_dim, m.predictor_hidden_dim, m.projection_dim])
        self.add_targets("backbone", "projector", momentum=m.ema_momentum, schedule="cosine")  # the momentum encoder
        self.criterion = InfoNCELoss(m.temperature)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        # Each view on its own, as in the reference code: BN statistics per view.
        z1, z2 = (self.projector(self.backbone(v)) for v in batch.views[:2])
        with torch.no_grad():
            k1, k2 = (self.target_projector(self.target_backbone(v)) for v in batch.views[:2])
        # Algorithm 1: ctr(q1, k2) + ctr(q2, k1), each cross-entropy scaled by 2 tau.
        scale = 2 * self.params.temperature
        loss = scale * (self.criterion(self.predictor(z1), k2) + self.criterion(self.predictor(z2), k1))
        return {"loss": loss, "embedding": z1.detach()}
