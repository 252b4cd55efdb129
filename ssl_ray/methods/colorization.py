"""Colorization (Zhang et al. 2016, "Colorful Image Colorization", https://arxiv.org/abs/1603.08511):
from an image's L channel alone, predict the distribution of each pixel's colour over the
quantised ab bins (``nn.colour_bins``), trained by the class-rebalanced multinomial
cross-entropy (Eq. 2-4): rare colours weigh more, so the network does not settle for the
desaturated average. The weights come from the training set's ab histogram, counted once
before the first epoch over the training images (``fits_targets``) and checkpointed.

As the paper: 313-style in-gamut bins of side 10 (261 with this conversion), soft targets over
the 5 nearest bins (sigma 5), lambda 0.5 and sigma 5 for the rebalancing, predictions at a
quarter of the input's resolution, annealed-mean decoding at T = 0.38 for the pictures.
Deviations: the paper's network is a VGG-style stack with dilated convolutions keeping 1/8 of
the resolution; here the encoder is the project's ResNet on L (``nn.colour_split.
LuminanceOnly``, what is kept and evaluated), and the prediction reads the hypercolumns of its
last three stages (``nn.heads.HypercolumnHead``; Larsson et al. 2016), since a small ResNet's
last map is a few cells wide. The pipelines leave colour jitter and grayscale out: they would
change the colours to predict.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import MethodParams
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.colour_bins import (
    ab_bins,
    annealed_mean,
    bin_histogram,
    colourised,
    lab_of,
    rebalancing_weights,
    soft_encode,
)
from ssl_ray.nn.feature_maps import stage_widths, unit_pixels
from ssl_ray.nn.heads import HypercolumnHead
from ssl_ray.nn.losses import RebalancedColourLoss
from ssl_ray.views.recipe import ONE_VIEW, Batch

STAGES = 3  # the encoder's last three stages feed the head


@register_method("colorization")
class Colorization(SSLMethod):
    crops = ONE_VIEW
    colour_split = "luminance"
    fits_targets = True
    fitted_buffers = ("colour_histogram", "rebalancing")
    illustrates = True

    class Params(MethodParams):
        # lambda of Eq. 4: the share of a uniform distribution mixed into the colours' prior.
        rebalance_mix: float = Field(default=0.5, ge=0.0, le=1.0)
        # The Gaussian's sigma, in ab units, of the soft targets and of the prior's smoothing.
        colour_sigma: float = Field(default=5.0, gt=0.0)
        soft_neighbours: int = Field(default=5, ge=1)
        # T of the annealed mean (Eq. 5), for the pictures of predicted colours.
        annealing_temperature: float = Field(default=0.38, gt=0.0)
        # The predictions' resolution: the crop's side divided by this (the paper: 4).
        output_stride: int = Field(default=4, ge=1)
        head_dim: int = Field(default=128, gt=0)
        # Training images whose colours are counted for the prior; None: every one.
        histogram_images: int | None = Field(default=None, gt=0)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        bins = len(ab_bins())
        self.head = HypercolumnHead(stage_widths(encoder.luminance)[-STAGES:], params.head_dim, bins)
        self.criterion = RebalancedColourLoss()
        # Checkpointed: a resume trains on the weights it left with, and does not count again.
        self.register_buffer("colour_histogram", torch.zeros(bins))
        self.register_buffer("rebalancing", torch.ones(bins))
        self.register_buffer("rebalanced_at_epoch", torch.tensor(-1, dtype=torch.long))

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, Q, s, s) at the output stride, pooled features (N, D)) of RGB images."""
        maps = self.backbone.feature_maps(images)
        size = max(1, images.shape[-1] // self.params.output_stride)
        return self.head(maps[-STAGES:], size), maps[-1].mean(dim=(2, 3))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        images = batch.views[0]
        logits, features = self.predict(images)
        with torch.autocast(images.device.type, enabled=False):
            ab = F.adaptive_avg_pool2d(lab_of(images)[:, 1:], logits.shape[-2:])
            target = soft_encode(ab, self.params.soft_neighbours, self.params.colour_sigma)
        return {"loss": self.criterion(logits, target, self.rebalancing), "embedding": features.detach()}

    def targets_due(self, epoch: int) -> bool:
        return int(self.rebalanced_at_epoch) < 0

    def target_sample_size(self) -> int:
        return self.params.histogram_images or 2**62

    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            return bin_histogram(lab_of(images)[:, 1:])

    def fit_targets(self, features: torch.Tensor, seed: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        counts = features.sum(dim=0).to(self.colour_histogram.device)
        self.colour_histogram.copy_(counts)
        self.rebalancing.copy_(rebalancing_weights(counts, self.params.rebalance_mix, self.params.colour_sigma))
        return None  # nothing per image: the weights are the targets

    def adopt_targets(self, epoch: int, index: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> dict:
        """Marks the weights fitted (rank 0 holds them; the loop broadcasts them). Returns the
        bins the training colours fill and the weights' range (rank 0's)."""
        self.rebalanced_at_epoch.fill_(epoch)
        return {
            "colour_bins_used": float(torch.count_nonzero(self.colour_histogram)),
            "rebalancing_weight_min": float(self.rebalancing.min()),
            "rebalancing_weight_max": float(self.rebalancing.max()),
        }

    @torch.no_grad()
    def illustrate(self, images: torch.Tensor) -> torch.Tensor:
        """Rows: the L channel the network sees, its colours (annealed mean), the true image."""
        logits, _ = self.predict(images)
        with torch.autocast(images.device.type, enabled=False):
            ab = annealed_mean(logits, self.params.annealing_temperature)
            gray = colourised(images, torch.zeros_like(ab))
            predicted = colourised(images, ab)
        return torch.stack([gray, predicted, unit_pixels(images)])
