"""SwAV (Caron et al. 2020): each global crop's projection is assigned to learnable prototypes
by Sinkhorn-Knopp (equal partition of the batch over the prototypes), and every other crop,
global or local, predicts that assignment (swapped prediction, Eq. 1-3). Multi-crop.

Paper defaults (Sec. 4, appendix A): 3000 prototypes, temperature 0.1, Sinkhorn 3 iterations
with epsilon 0.05, projection 2048 -> 128 (l2-normalised), prototypes l2-normalised after
every step and frozen for the first epoch, a queue of earlier projections when the batch is
small against the prototypes (3840 per worker at batch 256), 2x224 + 6x96 crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import Projector, Temperature
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.clustering import SwappedPredictionLoss
from ssl_ray.nn.distributed import this_workers_share, world_size
from ssl_ray.nn.heads import mlp
from ssl_ray.nn.multicrop import forward_by_size
from ssl_ray.nn.queue import KeyQueue
from ssl_ray.views.recipe import MULTI_CROP, Batch


@register_method("swav")
class SwAV(SSLMethod):
    crops = MULTI_CROP
    frozen_in_first_epoch = ("prototypes",)

    class Params(Projector, Temperature):
        temperature: float = Field(default=0.1, gt=0.0)
        projection_hidden_dim: int = Field(default=2048, gt=0)
        num_prototypes: int = Field(default=3000, gt=1)
        sinkhorn_iterations: int = Field(default=3, ge=1)
        sinkhorn_epsilon: float = Field(default=0.05, gt=0.0)
        # Earlier global-crop projections (all workers') Sinkhorn also spreads over; 0 = none.
        queue_size: int = Field(default=0, ge=0)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        self.projector = mlp([self.feature_dim, m.projection_hidden_dim, m.projection_dim])
        self.prototypes = nn.Linear(m.projection_dim, m.num_prototypes, bias=False)
        self.normalize_prototypes()
        self.criterion = SwappedPredictionLoss(m.temperature, m.sinkhorn_iterations, m.sinkhorn_epsilon)
        self.global_crops = recipe.global_crops
        if m.queue_size:
            self.queues = nn.ModuleList(KeyQueue(m.projection_dim, m.queue_size) for _ in range(self.global_crops))
            self.register_buffer("queued", torch.zeros((), dtype=torch.long))  # projections seen

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        z = forward_by_size(lambda x: F.normalize(self.projector(self.backbone(x)), dim=1), batch.views)
        scores = [self.prototypes(crop) for crop in z]
        queue_scores = None
        if self.params.queue_size and int(self.queued) >= self.params.queue_size:
            # Each worker brings its share of the (gathered) queue, so Sinkhorn's sums across
            # workers count every stored projection once.
            with torch.no_grad():
                queue_scores = [self.prototypes(this_workers_share(q.negatives())) for q in self.queues]
        loss = self.criterion(scores, assign_from=self.global_crops, queue_scores=queue_scores)
        new = [crop.detach() for crop in z[: self.global_crops]]
        return {"loss": loss, "embedding": z[0].detach(), "global_projections": new}

    @torch.no_grad()
    def after_step(self, outputs) -> None:
        self.normalize_prototypes()  # on the unit sphere for the next step's scores
        if self.params.queue_size:
            new = outputs["global_projections"]
            for queue, projections in zip(self.queues, new):
                queue.enqueue(projections)  # gathered from every worker inside
            self.queued += new[0].shape[0] * world_size()
