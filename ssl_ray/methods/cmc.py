"""CMC (Tian et al. 2019, "Contrastive Multiview Coding", https://arxiv.org/abs/1906.05849):
an image's L channel and its ab channels are two views of it, encoded by two networks
(``nn.colour_split.LabSplit``), and each view's embedding must pick out the other view of
the same image among the batch's (Eq. 2, both ways, Eq. 5).

Deviation from the paper: its negatives are K = 16,384 entries of a memory bank scored by NCE
(Sec. 3.2); here they are the other images of every worker's batch, by the softmax form the
paper also gives (Eq. 2), as the later work on contrastive learning does (SimCLR, MoCo v3):
no per-image memory to keep or checkpoint. Each half's features go through a linear map to
128-d and are l2-normalised (Sec. 4.1); temperature 0.07 (Sec. 4.1). The two halves see the
same crop and flip (the paper's views are channels of one image); colour jitter is left out
of the recipe in its pipelines, since it would move one view's content into the other's. The
representation kept is both halves' pooled features concatenated (Sec. 4.1.1).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import Temperature
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.losses import CrossViewNCELoss
from ssl_ray.views.recipe import ONE_VIEW, Batch


@register_method("cmc")
class CMC(SSLMethod):
    crops = ONE_VIEW
    colour_split = "lab"

    class Params(Temperature):
        temperature: float = Field(default=0.07, gt=0.0)
        projection_dim: int = Field(default=128, gt=0)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        luminance_dim, chroma_dim = encoder.dims
        self.luminance_head = nn.Linear(luminance_dim, params.projection_dim)
        self.chroma_head = nn.Linear(chroma_dim, params.projection_dim)
        self.criterion = CrossViewNCELoss(params.temperature)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        luminance, chroma = self.backbone.halves(batch.views[0])
        z_l, z_ab = self.luminance_head(luminance), self.chroma_head(chroma)
        return {"loss": self.criterion(z_l, z_ab), "embedding": z_l.detach()}
