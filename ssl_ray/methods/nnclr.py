"""NNCLR (Dwibedi et al. 2021, "With a Little Help from My Friends"): the positive of one
view is the nearest neighbour of the other view's projection in a support set of earlier
projections, so positives are other images of the dataset, not only another crop of the same
one. The support set is a FIFO queue of past projections (of every worker), checkpointed with
the model; a prediction MLP on the other branch; the loss is Eq. 1's InfoNCE of each
neighbour against the other view's predictions of the whole (global) batch, symmetrised
(Sec. 3.2).

Deviation from lightly's NNCLR, which runs NT-Xent over the 2N [neighbours; predictions]:
there a neighbour's negatives include the other neighbours, which get no gradient and are
often the same support row early on (one projection is the nearest of many), so those terms
cannot fall; measured in the shared 16-step test, that loss rose (7.6 -> 8.8). Eq. 1 has only
the predictions in its denominator, every term with a gradient.

Paper defaults (Sec. 4): support set 98,304, temperature 0.1, a 3-layer projector of 2048
hidden units -> 256 with BN, a 2-layer predictor with 4096 hidden units. The queue here
defaults to 4,096: the paper's queue holds 7.7% of ImageNet's 1.28M images, 4,096 about the
same share of a 60,000-image set like Fashion-MNIST (a queue of 98,304 would outgrow it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import Predictor, Projector, Temperature
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.distributed import gather_with_grad, rank
from ssl_ray.nn.heads import mlp
from ssl_ray.nn.losses import in_fp32
from ssl_ray.nn.queue import KeyQueue
from ssl_ray.views.recipe import Batch


def nearest_neighbours(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """For each row of ``z`` (N, D), the row of ``support`` (K, D) with the highest cosine
    similarity to it (Eq. 2: NN(z, Q) = argmin_q ||z - q||, l2-normalised vectors), normalised.
    No gradient flows through the lookup (the support set is a queue of detached vectors)."""
    z = F.normalize(z.detach().float(), dim=1)
    support = F.normalize(support.float(), dim=1)
    return support[(z @ support.T).argmax(dim=1)]


class NeighbourInfoNCE(nn.Module):
    """Eq. 1: ``L_i = -log( exp(NN(z_i).p_i+ / tau) / sum_k exp(NN(z_i).p_k+ / tau) )``, k over
    every worker's batch (gathered with gradient), l2-normalised vectors. Shapes (N, D); scalar."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    @in_fp32
    def forward(self, neighbours: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        predictions = F.normalize(gather_with_grad(predictions), dim=1)
        logits = F.normalize(neighbours, dim=1) @ predictions.T / self.temperature
        labels = torch.arange(neighbours.shape[0], device=logits.device) + rank() * neighbours.shape[0]
        return F.cross_entropy(logits, labels)


@register_method("nnclr")
class NNCLR(SSLMethod):
    class Params(Projector, Predictor, Temperature):
        temperature: float = Field(default=0.1, gt=0.0)
        projection_hidden_dim: int = Field(default=2048, gt=0)
        projection_dim: int = Field(default=256, gt=0)
        predictor_hidden_dim: int = Field(default=4096, gt=0)
        queue_size: int = Field(default=4096, gt=0)  # the support set

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        hidden, dim = m.projection_hidden_dim, m.projection_dim
        self.projector = mlp([self.feature_dim, hidden, hidden, dim], last_bn=True)
        self.predictor = mlp([dim, m.predictor_hidden_dim, dim])
        self.support = KeyQueue(dim, m.queue_size)
        self.criterion = NeighbourInfoNCE(m.temperature)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        z1, z2 = self.projector(self.backbone(torch.cat(batch.views))).chunk(2)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        support = self.support.negatives()
        # Eq. 3 symmetrised: each view's neighbour is the positive of the other view's prediction.
        loss = (
            self.criterion(nearest_neighbours(z1, support), p2) + self.criterion(nearest_neighbours(z2, support), p1)
        ) / 2
        return {"loss": loss, "embedding": z1.detach(), "projections": F.normalize(z1.detach(), dim=1)}

    @torch.no_grad()
    def after_step(self, outputs) -> None:
        self.support.enqueue(outputs["projections"])  # gathered from every worker inside
