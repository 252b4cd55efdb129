"""SimSiam (Chen & He 2021): a predictor on one branch, stop-gradient on the other, no
negatives and no target network. Paper defaults: 3-layer projector with BN on its output,
bottleneck predictor (2048 -> 512 -> 2048), predictor learning rate held fixed (Sec. 4.3)."""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import Predictor, Projector
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.heads import mlp
from ssl_ray.nn.losses import NegativeCosineLoss
from ssl_ray.views.recipe import Batch


@register_method("simsiam")
class SimSiam(SSLMethod):
    class Params(Projector, Predictor):
        projection_hidden_dim: int = Field(default=2048, gt=0)
        projection_dim: int = Field(default=2048, gt=0)
        # The collapse ablation (Sec. 4.1, Fig. 2): false removes the stop-gradient.
        stop_gradient: bool = True

    fixed_lr_modules = ("predictor",)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        dim = m.projection_dim
        self.projector = mlp([self.feature_dim, m.projection_hidden_dim, m.projection_hidden_dim, dim], last_bn=True)
        self.predictor = mlp([dim, m.predictor_hidden_dim, dim])
        self.criterion = NegativeCosineLoss(stop_gradient=m.stop_gradient)

    def embed(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, p) for one view. Views go through separately, as in the reference code, so BN
        statistics never mix the two branches (through BN, p1 would otherwise depend on z2)."""
        z = self.projector(self.backbone(view))
        return z, self.predictor(z)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        (z1, p1), (z2, p2) = self.embed(batch.views[0]), self.embed(batch.views[1])
        # Eq. 4: L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2; the loss detaches its second argument
        # (unless method.stop_gradient is false: the collapse ablation).
        loss = self.criterion(p1, z2) / 2 + self.criterion(p2, z1) / 2
        return {"loss": loss, "embedding": z1.detach()}
