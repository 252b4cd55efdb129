"""RotNet (Gidaris et al. 2018, "Unsupervised Representation Learning by Predicting Image
Rotations", https://arxiv.org/abs/1803.07728): every image turned by 0, 90, 180 and 270
degrees, and a 4-way classifier of the turn on the encoder's features.

The batch holds all four rotations of every image (Sec. 3.2 and Table 2: better than one
random rotation per image); the rotations are made in the data pipeline from the image's one
crop (``RotatedCopies``), colour-augmented each on its own. The paper's classifier sits on
conv features of a NIN; here it is a linear layer on the pooled features, the encoder being
what is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import MethodParams
from ssl_ray.methods.registry import register_method
from ssl_ray.views.parts import RotatedCopies
from ssl_ray.views.recipe import ONE_VIEW, Batch

ROTATIONS = 4


@register_method("rotnet")
class RotNet(SSLMethod):
    crops = ONE_VIEW

    class Params(MethodParams):
        # Rotated copies of each image in the batch (the paper's best: all four).
        rotations_per_image: int = Field(default=4, ge=1, le=ROTATIONS)

    @classmethod
    def recipe_parts(cls, params) -> tuple[RotatedCopies, ...]:
        return (RotatedCopies(params.rotations_per_image),)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        self.classifier = nn.Linear(self.feature_dim, ROTATIONS)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        rotated, rotation = batch["rotated"], batch["rotation"]  # (N, k, C, S, S), (N, k)
        n, k = rotation.shape
        features = self.backbone(rotated.flatten(0, 1))
        loss = F.cross_entropy(self.classifier(features).float(), rotation.flatten())
        return {"loss": loss, "embedding": features.view(n, k, -1)[:, 0].detach()}
