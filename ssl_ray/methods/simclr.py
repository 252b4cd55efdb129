"""SimCLR (Chen et al. 2020): two views, a projection MLP, NT-Xent over the 2N views.
Paper defaults: temperature 0.1 (batch 4096, Table 5), projection 2048 -> 128 (Sec. 2.1)."""

from __future__ import annotations

import torch

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.heads import projection_head
from ssl_ray.nn.losses import NTXentLoss


@register_method("simclr")
class SimCLR(SSLMethod):
    defaults = {"temperature": 0.1, "projection_hidden_dim": 2048, "projection_dim": 128}

    def __init__(self, config) -> None:
        super().__init__(config)
        m = config.method
        self.projector = projection_head(self.feature_dim, m.projection_hidden_dim, m.projection_dim)
        self.criterion = NTXentLoss(m.temperature)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"SimCLR takes 2 views, got {len(views)}")
        n = views[0].shape[0]
        # One pass over both views: BN statistics over 2N images, as in the reference code.
        z = self.projector(self.backbone(torch.cat(views)))
        return {"loss": self.criterion(z[:n], z[n:]), "embedding": z[:n].detach()}
