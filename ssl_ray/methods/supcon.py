"""SupCon (Khosla et al. 2020, "Supervised Contrastive Learning"): SimCLR's two views and
projector, trained on labels: every view of the same class is a positive (Eq. 2). Needs a
labelled source (Fashion-MNIST, class sub-folders, a Parquet label column); the run is
refused up front when the data has no labels.

Paper defaults: temperature 0.1, projection 2048 -> 128 (Sec. 4)."""

from __future__ import annotations

import torch
from torch import nn

from ssl_ray.methods.registry import register_method
from ssl_ray.methods.simclr import SimCLR
from ssl_ray.nn.losses import SupConLoss
from ssl_ray.views.recipe import Batch


@register_method("supcon")
class SupCon(SimCLR):
    uses_labels = True

    @staticmethod
    def build_criterion(params) -> nn.Module:
        return SupConLoss(params.temperature)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.labels is None:
            raise ValueError("supcon trains on labels: the batch has none")
        z1, z2 = self.project(batch.views)
        return {"loss": self.criterion(z1, z2, batch.labels), "embedding": z1.detach()}
