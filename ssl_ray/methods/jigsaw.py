"""Jigsaw (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving
Jigsaw Puzzles", https://arxiv.org/abs/1603.09246): an image cut into 3 x 3 tiles with gaps
and jitter, shuffled by one of P permutations; each tile encoded by the shared encoder, the
features concatenated, and the permutation's index classified (P-way cross-entropy).

P is 1,000 in the paper (100 is in its Table 3 too, 1.7 points lower on detection): the
default here is 100 for 28-48 px images, where 9-tile puzzles have far less to tell apart.
The set is chosen for Hamming distance (``maximal_hamming_permutations``). The paper's fc6
(512 per tile) and fc7 (4096) are ``tile_dim`` and ``hidden_dim``, scaled to our encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import TileParams
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.heads import TileFusion
from ssl_ray.views.parts import ShuffledTiles
from ssl_ray.views.permutations import maximal_hamming_permutations
from ssl_ray.views.recipe import ONE_VIEW, Batch

GRID = 3


@register_method("jigsaw")
class Jigsaw(SSLMethod):
    crops = ONE_VIEW

    class Params(TileParams):
        tile_fraction: float = Field(default=0.85, gt=0.0, le=1.0)  # the paper's 64 px tiles in 75 px cells
        permutations: int = Field(default=100, ge=2, le=362_880)

    @classmethod
    def recipe_parts(cls, params) -> tuple[ShuffledTiles, ...]:
        order = maximal_hamming_permutations(params.permutations, GRID * GRID)
        return (ShuffledTiles(order, GRID, params.tile_fraction),)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        self.fusion = TileFusion(self.feature_dim, GRID * GRID, m.tile_dim, [m.hidden_dim, m.permutations])

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        tiles = batch["tiles"]  # (N, 9, C, t, t), shuffled
        features = self.backbone(tiles.flatten(0, 1)).view(*tiles.shape[:2], -1)
        loss = F.cross_entropy(self.fusion(features).float(), batch["permutation"])
        return {"loss": loss, "embedding": features.mean(dim=1).detach()}
