"""VICReg (Bardes, Ponce & LeCun 2022): invariance (MSE between the two views' projections),
variance (a hinge keeping every dimension's std over the global batch above 1) and
covariance (off-diagonal covariances pushed to 0), each view's terms on its own (Eq. 6).

Paper defaults (Sec. 4.3): lambda = mu = 25, nu = 1, eps 1e-4; projector of three 8192-wide
layers (BN and ReLU after the first two); LARS, base lr 0.2."""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import Projector
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.decorrelation import VICRegLoss
from ssl_ray.nn.heads import mlp
from ssl_ray.views.recipe import Batch


@register_method("vicreg")
class VICReg(SSLMethod):
    class Params(Projector):
        projection_hidden_dim: int = Field(default=8192, gt=0)
        projection_dim: int = Field(default=8192, gt=0)
        invariance_weight: float = Field(default=25.0, ge=0.0)  # lambda
        variance_weight: float = Field(default=25.0, ge=0.0)  # mu
        covariance_weight: float = Field(default=1.0, ge=0.0)  # nu

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        self.projector = mlp([self.feature_dim, m.projection_hidden_dim, m.projection_hidden_dim, m.projection_dim])
        self.criterion = VICRegLoss(m.invariance_weight, m.variance_weight, m.covariance_weight)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        z1, z2 = self.projector(self.backbone(torch.cat(batch.views))).chunk(2)
        return {"loss": self.criterion(z1, z2), "embedding": z1.detach()}
