"""DenseCL (Wang et al. 2021, "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training", https://arxiv.org/abs/2011.09157): MoCo v2 with a second, dense branch. A
dense projection head (1x1 convolutions) on the encoder's feature map before pooling; each
position of the query view's map matched to the key view's most similar position, by the
cosine of the two backbones' features (not by the crop geometry, Eq. 3); InfoNCE of the
matched pairs against a second queue, of the key maps' pooled dense projections (Eq. 2).
The loss is (1 - lambda) L_global + lambda L_dense, lambda 0.5 (Eq. 4).

As the paper and its reference code: the global branch is MoCo v2's (queue 65536, key
momentum 0.999 held constant, temperature 0.2 for both terms, 128-d keys, shuffling BN), the
dense head conv -> ReLU -> conv without BN, one direction (query view 1, key view 2). The
global features are the feature map's mean, which for the ResNets is the encoder's own
pooling, so one backbone pass serves both branches.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_ray.methods.moco import MoCoV2
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.backbones import dense_map
from ssl_ray.nn.dense_matching import gather_positions, most_similar_positions
from ssl_ray.nn.distributed import shuffle_across_workers, unshuffle_across_workers
from ssl_ray.nn.heads import pixel_mlp
from ssl_ray.nn.queue import KeyQueue
from ssl_ray.views.recipe import Batch


def _positions(maps: torch.Tensor) -> torch.Tensor:
    """(N * h * w, D): every position of every map as a row."""
    return maps.flatten(2).transpose(1, 2).flatten(0, 1)


@register_method("densecl")
class DenseCL(MoCoV2):
    class Params(MoCoV2.Params):
        # lambda of Eq. 4: the dense term's share of the loss (paper: 0.5, Table 1's best).
        dense_weight: float = Field(default=0.5, ge=0.0, le=1.0)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        self.dense_projector = pixel_mlp([self.feature_dim, m.projection_hidden_dim, m.projection_dim], hidden_bn=False)
        self.add_targets("dense_projector", momentum=m.ema_momentum, schedule="constant")
        self.dense_queue = KeyQueue(m.projection_dim, m.queue_size)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        maps = dense_map(self.backbone, batch.views[0])
        queries = self.projector(maps.mean(dim=(2, 3)))
        dense_queries = self.dense_projector(maps)
        with torch.no_grad():
            shuffled, restore = shuffle_across_workers(batch.views[1])
            key_maps = unshuffle_across_workers(dense_map(self.target_backbone, shuffled), restore)
            keys = self.target_projector(key_maps.mean(dim=(2, 3)))
            dense_keys = self.target_dense_projector(key_maps)
            matched = gather_positions(dense_keys, most_similar_positions(maps.detach(), key_maps))
        dense_loss = self.criterion(_positions(dense_queries), _positions(matched), self.dense_queue.negatives())
        global_loss = self.criterion(queries, keys, self.queue.negatives())
        weight = self.params.dense_weight
        return {
            "loss": (1 - weight) * global_loss + weight * dense_loss,
            "embedding": queries.detach(),
            "keys": keys,
            # One key per image enters the dense queue: its dense projections' mean (the
            # reference code's avgpool of the key grid), so the queue holds other images.
            "dense_keys": dense_keys.mean(dim=(2, 3)),
        }

    @torch.no_grad()
    def after_step(self, outputs) -> None:
        super().after_step(outputs)
        self.dense_queue.enqueue(outputs["dense_keys"])
