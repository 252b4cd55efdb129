"""PixPro (Xie et al. 2021, "Propagate Yourself: Exploring Pixel-Level Consistency for
Unsupervised Visual Representation Learning", https://arxiv.org/abs/2011.10043): two views,
the encoder's feature map before pooling (``nn.backbones.dense_map``) through a pixel-level
projector (1x1 convolutions), then the pixel propagation module on the online side; the
pixel-to-propagation consistency against an EMA target's projected map of the other view, over
the positions both views show (``nn.dense_matching``, their crop boxes carried from Ray Data).

As the paper: gamma 2, one linear layer in the propagation module, the matching threshold
0.7 of a feature-map cell, the symmetric loss (Eq. 5), target momentum 0.99 raised to 1 along a
cosine. The instance-level branch of Sec. 3.4 / Table 4 is optional (``instance_weight``, 0 by
default: the pixel-level loss alone, the paper's best row on Pascal VOC): BYOL's loss on the
pooled map through an instance projector and predictor, against the EMA target's projection of
the other view, added with that weight, as the authors' code
(https://github.com/zdaxie/PixPro) does.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import MomentumTarget, Projector
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.backbones import dense_map
from ssl_ray.nn.dense_matching import positive_pairs
from ssl_ray.nn.heads import PixelPropagation, mlp, pixel_mlp
from ssl_ray.nn.losses import NegativeCosineLoss, PixelConsistencyLoss
from ssl_ray.views.parts import CropBoxes
from ssl_ray.views.recipe import Batch


@register_method("pixpro")
class PixPro(SSLMethod):
    class Params(Projector, MomentumTarget):
        projection_hidden_dim: int = Field(default=2048, gt=0)
        projection_dim: int = Field(default=256, gt=0)
        ema_momentum: float = Field(default=0.99, ge=0.0, le=1.0)
        # s(x_i, x_j) = max(cos, 0)^gamma in the propagation module (Eq. 3).
        sharpness: float = Field(default=2.0, gt=0.0)
        propagation_layers: int = Field(default=1, ge=1, le=2)
        # Positions of the two views closer than this many feature-map cells are positive pairs.
        match_threshold: float = Field(default=0.7, gt=0.0)
        # Weight of the instance-level branch added to the pixel loss; 0 leaves it out.
        instance_weight: float = Field(default=0.0, ge=0.0)

    @classmethod
    def recipe_parts(cls, params) -> tuple[CropBoxes, ...]:
        return (CropBoxes(),)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        self.projector = pixel_mlp([self.feature_dim, m.projection_hidden_dim, m.projection_dim])
        self.propagation = PixelPropagation(m.projection_dim, m.sharpness, m.propagation_layers)
        heads = ("backbone", "projector")
        if m.instance_weight > 0:
            self.instance_projector = mlp([self.feature_dim, m.projection_hidden_dim, m.projection_dim])
            self.instance_predictor = mlp([m.projection_dim, m.projection_hidden_dim, m.projection_dim])
            heads += ("instance_projector",)
        self.add_targets(*heads, momentum=m.ema_momentum, schedule="cosine")
        self.criterion = PixelConsistencyLoss()
        self.instance_criterion = NegativeCosineLoss()

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        n = batch.size
        boxes = batch["crop_boxes"]  # (N, 2, 4)
        both = torch.cat(batch.views)
        maps = dense_map(self.backbone, both)
        y = self.propagation(self.projector(maps))
        with torch.no_grad():
            target_maps = dense_map(self.target_backbone, both)
            target = self.target_projector(target_maps)
        h, w = maps.shape[-2:]
        pairs = positive_pairs(boxes[:, 0], boxes[:, 1], h, w, self.params.match_threshold)
        # Eq. 5: view 1's propagated map against view 2's target, and view 2's against view 1's.
        loss = self.criterion(y[:n], target[n:], pairs) + self.criterion(y[n:], target[:n], pairs.transpose(1, 2))
        pooled = maps.mean(dim=(2, 3))
        if self.params.instance_weight > 0:
            p = self.instance_predictor(self.instance_projector(pooled))
            with torch.no_grad():
                z = self.target_instance_projector(target_maps.mean(dim=(2, 3)))
            # BYOL's symmetrised 2 - 2 cos(p, z') for each view order.
            instance = 4 + 2 * (self.instance_criterion(p[:n], z[n:]) + self.instance_criterion(p[n:], z[:n]))
            loss = loss + self.params.instance_weight * instance
        return {"loss": loss, "embedding": pooled[:n].detach()}
