"""CPC v2 (Hénaff et al. 2020, "Data-Efficient Image Recognition with Contrastive Predictive
Coding", https://arxiv.org/abs/1905.09272): an image cut into a grid of overlapping patches,
each encoded on its own by the ResNet, a masked-convolution context network over the grid of
patch vectors (``nn.autoregressive``: each context sees its row and the rows above), and from
the context at (i, j) a linear prediction of the patch vector k rows below, for k = 1..K,
scored by InfoNCE against every other patch vector of the batch, other images and other
positions of the same image (Eq. 1-2).

As the paper: patches about a quarter of the crop wide and half a patch apart (64 of 240 px,
32 apart: 8 of 28 px, 5 apart here), each augmented on its own (``views.parts.PatchGrid``:
its own flip, its own colour draw), predictions from the top rows down, one linear map per
step. Deviations: the scores are cosines over a temperature of 0.1, not dot products (which
diverged here: ``nn.losses.ContrastivePredictionLoss``); K = 2 steps below (the paper's up to 5 on a 7 x 7 grid,
here a 5 x 5 one); the context network is 3 bottleneck blocks of masked 2 x 3 convolutions
(the paper's PixelCNN is deeper); the encoder keeps batch norm, which the paper replaced by
layer norm so that statistics shared by a batch's patches cannot carry information between
them (the negatives here are the whole batch's patches, as there); predictions run top to
bottom only (the paper also adds the other directions, Table 1). The encoder kept and
evaluated reads the image as training did, a grid of patches (without the augmentation), and
averages their features (``nn.backbones.PatchGridPool``; the paper's linear evaluation pools
the grid of patch features). The same ResNet on the whole image scored 16% kNN top-1 after one
epoch where the random init scores 60%: its batch norm statistics are the patches'.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import MethodParams
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.autoregressive import ContextNetwork
from ssl_ray.nn.losses import ContrastivePredictionLoss
from ssl_ray.views.parts import PatchGrid
from ssl_ray.views.recipe import ONE_VIEW, Batch


@register_method("cpc_v2")
class CPCv2(SSLMethod):
    crops = ONE_VIEW

    class Params(MethodParams):
        # The patches' side and spacing in pixels of the crop (the paper's 64 and 32 at 240 px).
        patch_size: int = Field(default=8, ge=1)
        patch_stride: int = Field(default=4, ge=1)
        patch_flip_p: float = Field(default=0.5, ge=0.0, le=1.0)
        # Rows below the context that are predicted (k = 1..prediction_steps).
        prediction_steps: int = Field(default=2, ge=1)
        context_hidden_dim: int = Field(default=128, gt=0)
        context_blocks: int = Field(default=3, ge=1)
        # Scores: cosines over this temperature; None: the paper's dot products (see the loss).
        temperature: float | None = Field(default=0.1, gt=0.0)

    @classmethod
    def patch_grid(cls, params) -> tuple[int, int]:
        return (params.patch_size, params.patch_stride)

    @classmethod
    def recipe_parts(cls, params) -> tuple[PatchGrid, ...]:
        return (PatchGrid(params.patch_size, params.patch_stride, params.patch_flip_p),)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        self.context = ContextNetwork(feature_dim, params.context_hidden_dim, params.context_blocks)
        self.predictors = nn.ModuleList(nn.Linear(feature_dim, feature_dim) for _ in range(params.prediction_steps))
        self.criterion = ContrastivePredictionLoss(params.temperature)

    def patch_vectors(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, g*g, C, p, p) patches -> (N, D, g, g) their encodings, on the grid."""
        n, length = patches.shape[:2]
        side = round(length**0.5)
        vectors = self.backbone.encoder(patches.flatten(0, 1)).view(n, side, side, -1)
        return vectors.permute(0, 3, 1, 2)

    def predictions(self, vectors: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per step k: (predictions (M_k, D) from the contexts of rows 0..g-1-k, the flat index
        (M_k,) of each one's target, the patch k rows below, among the N * g * g patches)."""
        n, dim, side, _ = vectors.shape
        contexts = self.context(vectors)
        index = torch.arange(n * side * side, device=vectors.device).view(n, side, side)
        out = []
        for k, predictor in enumerate(self.predictors, start=1):
            if k >= side:
                break
            source = contexts[:, :, : side - k].permute(0, 2, 3, 1).reshape(-1, dim)
            out.append((predictor(source), index[:, k:].reshape(-1)))
        return out

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        vectors = self.patch_vectors(batch["patches"])
        targets = vectors.permute(0, 2, 3, 1).reshape(-1, vectors.shape[1])
        steps = self.predictions(vectors)
        loss = torch.stack([self.criterion(p, targets, positive) for p, positive in steps]).mean()
        return {"loss": loss, "embedding": vectors.mean(dim=(2, 3)).detach()}
