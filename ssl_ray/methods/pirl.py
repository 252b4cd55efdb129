"""PIRL (Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant
Representations", https://arxiv.org/abs/1912.01991): the representation of an image and of
its jigsaw-shuffled version are made similar, by noise-contrastive estimation against a
memory bank of each image's past representations (Eq. 4):

    L = lambda * L_NCE(m_I, g(v_It)) + (1 - lambda) * L_NCE(m_I, f(v_I))

f: the encoder's pooled features of the image through a linear map to 128 dimensions; g: each
of the 9 tiles through the same encoder, each to 128 dimensions, concatenated in the shuffled
order, then linearly to 128 (Sec. 4.1); m_I: the bank's exponential moving average of f(v_I)
with momentum 0.5; lambda 0.5; temperature 0.07; 32,000 negatives from the bank (Sec. 4.1).
The negatives here default to 4,096: 2.5% of ImageNet's 1.28M images is 32,000, and 4,096 is
about 7% of a 60,000-image set (the bank itself holds every training image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import PerSample, Temperature, TileParams
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.heads import TileFusion
from ssl_ray.nn.losses import MemoryNCELoss
from ssl_ray.nn.memory_bank import MemoryBank
from ssl_ray.views.parts import SAMPLE_INDEX, SampleIndex, ShuffledTiles
from ssl_ray.views.recipe import ONE_VIEW, Batch

GRID = 3


@register_method("pirl")
class PIRL(SSLMethod):
    crops = ONE_VIEW

    class Params(TileParams, Temperature, PerSample):
        temperature: float = Field(default=0.07, gt=0.0)
        projection_dim: int = Field(default=128, gt=0)
        tile_dim: int = Field(default=128, gt=0)  # each tile's projection before the concatenation
        bank_momentum: float = Field(default=0.5, ge=0.0, le=1.0)
        # lambda of Eq. 4: the weight of the jigsaw term, the rest on the image's own.
        jigsaw_weight: float = Field(default=0.5, ge=0.0, le=1.0)
        negatives: int = Field(default=4096, gt=0)

    @classmethod
    def recipe_parts(cls, params) -> tuple:
        return (ShuffledTiles(None, GRID, params.tile_fraction), SampleIndex())

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        if m.num_samples is None:
            raise ValueError("method.num_samples: PIRL's memory bank needs the training set's size")
        self.image_head = nn.Linear(self.feature_dim, m.projection_dim)
        self.tile_head = TileFusion(self.feature_dim, GRID * GRID, m.tile_dim, [m.projection_dim])
        self.bank = MemoryBank(m.num_samples, m.projection_dim, m.bank_momentum)
        self.criterion = MemoryNCELoss(m.temperature, m.num_samples)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        index, tiles = batch[SAMPLE_INDEX], batch["tiles"]
        image = F.normalize(self.image_head(self.backbone(batch.views[0])), dim=1)
        tile_features = self.backbone(tiles.flatten(0, 1)).view(*tiles.shape[:2], -1)
        jigsaw = F.normalize(self.tile_head(tile_features), dim=1)
        memories, negatives = self.bank[index], self.bank.sample(self.params.negatives)
        weight = self.params.jigsaw_weight
        loss = weight * self.criterion(jigsaw, memories, negatives)
        loss = loss + (1.0 - weight) * self.criterion(image, memories, negatives)
        return {"loss": loss, "embedding": image.detach(), "sample_index": index, "image": image.detach()}

    def after_step(self, outputs: dict[str, torch.Tensor]) -> None:
        self.bank.update(outputs["sample_index"], outputs["image"])
