"""MoCo v1 (He et al. 2020) and v2 (Chen et al. 2020, "Improved baselines"): a query encoder
trained with InfoNCE against a momentum key encoder's key for the other view and a queue of
K earlier keys as negatives. v2 differs only in its head (an MLP instead of a linear layer)
and its defaults; its blur and cosine learning rate are set in the view recipe and the
schedule, like every other method's.

Paper defaults: K 65536, key momentum 0.999 held constant, temperature 0.07 (v1) / 0.2 (v2),
128-d keys, shuffling BN across workers (Sec. 3.3)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import MomentumTarget, Projector, Temperature
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.distributed import shuffle_across_workers, unshuffle_across_workers
from ssl_ray.nn.heads import mlp
from ssl_ray.nn.losses import InfoNCELoss
from ssl_ray.nn.queue import KeyQueue
from ssl_ray.views.recipe import Batch


class _MoCoWithQueue(SSLMethod):
    class Params(Projector, MomentumTarget, Temperature):
        temperature: float = Field(default=0.2, gt=0.0)
        projection_dim: int = Field(default=128, gt=0)
        ema_momentum: float = Field(default=0.999, ge=0.0, le=1.0)
        queue_size: int = Field(default=65536, gt=0)  # K negatives kept from earlier batches

    sync_batchnorm = False  # shuffling BN (Sec. 3.3) is how MoCo keeps batch statistics honest

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        self.projector = self.head(self.feature_dim, m.projection_hidden_dim, m.projection_dim)
        self.add_targets("backbone", "projector", momentum=m.ema_momentum, schedule="constant")  # Eq. 2, m constant
        self.queue = KeyQueue(m.projection_dim, m.queue_size)
        self.criterion = InfoNCELoss(m.temperature)

    @staticmethod
    def head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        queries = self.projector(self.backbone(batch.views[0]))
        with torch.no_grad():
            shuffled, restore = shuffle_across_workers(batch.views[1])
            keys = unshuffle_across_workers(self.target_projector(self.target_backbone(shuffled)), restore)
        # Eq. 1 with the queue as the K negatives; this batch's keys join it after the step.
        loss = self.criterion(queries, keys, self.queue.negatives())
        return {"loss": loss, "embedding": queries.detach(), "keys": keys}

    @torch.no_grad()
    def after_step(self, outputs) -> None:
        self.queue.enqueue(outputs["keys"])  # gathered from every worker inside


@register_method("moco_v1")
class MoCoV1(_MoCoWithQueue):
    class Params(_MoCoWithQueue.Params):
        temperature: float = Field(default=0.07, gt=0.0)

    @staticmethod
    def head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
        return mlp([in_dim, out_dim])  # the encoder's fc layer, re-sized to the key dimension


@register_method("moco_v2")
class MoCoV2(_MoCoWithQueue):
    class Params(_MoCoWithQueue.Params):
        projection_hidden_dim: int = Field(default=2048, gt=0)

    @staticmethod
    def head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
        return mlp([in_dim, hidden_dim, out_dim], hidden_bn=False)  # fc -> ReLU -> fc (Sec. 2)
