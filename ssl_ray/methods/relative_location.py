"""Relative patch location (Doersch et al. 2015, "Unsupervised Visual Representation Learning
by Context Prediction", https://arxiv.org/abs/1505.05192): a patch from the centre of a 3 x 3
grid and one of its 8 neighbours, with gaps and jitter between them, encoded by the shared
encoder; their concatenated features classify where the neighbour lies (8-way cross-entropy).

The paper's patches are 96 px with a 48 px gap (``tile_fraction`` 2/3 of a cell) and up to 7
px of jitter (here: anywhere in the cell's slack); its colour dropping against chromatic
aberration has nothing to act on in grayscale and is left to the colour recipe's grayscale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import TileParams
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.heads import TileFusion
from ssl_ray.views.parts import NEIGHBOURS, NeighbourPatches
from ssl_ray.views.recipe import ONE_VIEW, Batch


@register_method("relative_location")
class RelativeLocation(SSLMethod):
    crops = ONE_VIEW

    class Params(TileParams):
        tile_fraction: float = Field(default=2 / 3, gt=0.0, le=1.0)  # 96 px patches, 48 px apart

    @classmethod
    def recipe_parts(cls, params) -> tuple[NeighbourPatches, ...]:
        return (NeighbourPatches(params.tile_fraction),)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        self.fusion = TileFusion(self.feature_dim, 2, params.tile_dim, [params.hidden_dim, len(NEIGHBOURS)])

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        patches = batch["patches"]  # (N, 2, C, t, t): the centre, then the neighbour
        features = self.backbone(patches.flatten(0, 1)).view(*patches.shape[:2], -1)
        loss = F.cross_entropy(self.fusion(features).float(), batch["location"])
        return {"loss": loss, "embedding": features[:, 0].detach()}
