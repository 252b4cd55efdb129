"""SimCLR (Chen et al. 2020): two views, a projection MLP, NT-Xent over the 2N views.
Paper defaults: temperature 0.1 (batch 4096, Table 5), projection 2048 -> 128 (Sec. 2.1)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import Projector, Temperature
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.heads import mlp
from ssl_ray.nn.losses import NTXentLoss
from ssl_ray.views.recipe import Batch


@register_method("simclr")
class SimCLR(SSLMethod):
    class Params(Projector, Temperature):
        temperature: float = Field(default=0.1, gt=0.0)
        projection_hidden_dim: int = Field(default=2048, gt=0)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        self.projector = mlp(self.projector_dims(params, self.feature_dim))
        self.criterion = self.build_criterion(params)

    @staticmethod
    def projector_dims(params, feature_dim: int) -> list[int]:
        """g(.): "a MLP with one hidden layer to obtain z_i = g(h_i) = W2 relu(W1 h_i)" (Sec.
        2.1); BN after the hidden layer, as in the reference code."""
        return [feature_dim, params.projection_hidden_dim, params.projection_dim]

    @staticmethod
    def build_criterion(params) -> nn.Module:
        return NTXentLoss(params.temperature)

    def project(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(z1, z2) of the two views, in one pass: BN statistics over 2N images, as in the
        reference code."""
        if len(views) != 2:
            raise ValueError(f"{self.name} takes 2 views, got {len(views)}")
        z = self.projector(self.backbone(torch.cat(views)))
        return z.chunk(2)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        z1, z2 = self.project(batch.views)
        return {"loss": self.criterion(z1, z2), "embedding": z1.detach()}
