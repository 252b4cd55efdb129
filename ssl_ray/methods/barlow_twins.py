"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' batch-normalised
projections, over the global batch, is pulled towards the identity: invariance on the
diagonal, redundancy reduction off it (Eq. 1). No negatives, predictor or target network.

Paper defaults (Sec. 4): projector of three 8192-wide linear layers (BN and ReLU after the
first two), lambda 5e-3 for that width, LARS. The paper gives lambda for D = 8192 only and
does not scale it with D; a narrower projector keeps it (``method.lambda_offdiag``)."""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import Projector
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.decorrelation import BarlowTwinsLoss
from ssl_ray.nn.heads import mlp
from ssl_ray.views.recipe import Batch


@register_method("barlow_twins")
class BarlowTwins(SSLMethod):
    class Params(Projector):
        projection_hidden_dim: int = Field(default=8192, gt=0)
        projection_dim: int = Field(default=8192, gt=0)
        lambda_offdiag: float = Field(default=5e-3, gt=0.0)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        self.projector = mlp([self.feature_dim, m.projection_hidden_dim, m.projection_hidden_dim, m.projection_dim])
        self.criterion = BarlowTwinsLoss(m.lambda_offdiag)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        # One pass over both views, as the reference code's shared backbone call per view is
        # equivalent up to BN statistics; here BN sees both views' 2N images.
        z1, z2 = self.projector(self.backbone(torch.cat(batch.views))).chunk(2)
        return {"loss": self.criterion(z1, z2), "embedding": z1.detach()}
