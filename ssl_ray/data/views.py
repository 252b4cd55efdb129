"""View recipes: per-sample random augmentations applied to whole batches (kornia).

Split in two stages so the same recipe can run wholly on CPUs inside Ray Data, or with only
the crop there and the colour part on the GPU: ``crop_transform`` then ``colour_transform``.

A recipe is a list of per-view transforms, one per view ``augment`` asks for: SimCLR's two
alike, BYOL's two asymmetric ones, or multi-crop's global crops followed by smaller local
crops (each view one batch of one size, so the encoder sees one batch per crop size). Every sample
gets its own random crop, flip, jitter and blur parameters, drawn in one batched call rather
than image by image, so augmentation does not eat the cores that training needs.
"""

from __future__ import annotations

from typing import Literal

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

from ssl_ray.config import AugmentConfig
from ssl_ray.data.colour import RandomColourJitter


def crop_transform(config: AugmentConfig, view: int = 0) -> nn.Module:
    """The geometric part that must run where images still have their own sizes: view
    ``view``'s random resized crop (global or local, by its size and scale), what Ray Data
    does when the rest runs on the GPU."""
    size = config.view_size(view)
    return K.RandomResizedCrop((size, size), scale=config.view_crop_scale(view))


def colour_transform(config: AugmentConfig, channels: int, view: int = 0) -> nn.Module:
    """The rest of the recipe, on same-size float images in [0, 1], on any device: flip,
    colour jitter, grayscale, blur and solarize, each with its own random parameters per image."""
    s = config.strength
    steps: list[nn.Module] = [K.RandomHorizontalFlip(p=config.flip_p)]
    if s > 0 and config.jitter_p > 0:
        colour = (0.8 * s, 0.2 * s) if channels == 3 else (0.0, 0.0)
        # One affine colour map per image (data/colour.py): kornia's HSV-based ColorJitter is
        # most of the recipe's cost at 224 px (benchmarks/README.md).
        steps.append(RandomColourJitter(0.8 * s, 0.8 * s, colour[0], colour[1], p=config.jitter_p))
    if channels == 3:
        steps.append(K.RandomGrayscale(p=0.2))
    blur_p = config.for_view("blur_p", view)
    if blur_p > 0:
        # Kernel about 10% of the image side, odd (SimCLR appendix A).
        kernel = max(3, (config.view_size(view) // 10) | 1)
        steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p))
    solarize_p = config.for_view("solarize_p", view)
    if solarize_p > 0:
        # BYOL's solarization: x -> 1 - x above a fixed threshold of 0.5, no brightness shift.
        steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
    return nn.Sequential(*steps)


def view_transform(config: AugmentConfig, channels: int, view: int = 0) -> nn.Module:
    """SimCLR's augmentation (Chen et al. 2020, appendix A) for float images in [0, 1].

    Random resized crop, horizontal flip, colour jitter scaled by ``strength`` s
    (brightness/contrast/saturation 0.8s, hue 0.2s; brightness/contrast only for grayscale),
    then Gaussian blur and solarization with view ``view``'s probabilities (BYOL, Grill et al.
    2020, Table 6: blur 1.0 / 0.1, solarize 0 / 0.2 for the two views).
    """
    return nn.Sequential(crop_transform(config, view), *colour_transform(config, channels, view))


class DeviceViews(nn.Module):
    """The colour part of every view's recipe, for batches already on the training device.

    With ``augment.on: device`` Ray Data only decodes and crops (``ViewMaker(stage="crop")``,
    uint8); this turns each view's uint8 batch into augmented floats in [0, 1] where the model
    runs, drawing every image's parameters independently, in fp32.
    """

    def __init__(self, config: AugmentConfig, channels: int) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(colour_transform(config, channels, i) for i in range(config.num_views))

    @torch.no_grad()
    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        # Clamped as the uint8 path is: the blur's float sums can overshoot 1 by an ulp.
        return [t(v.float().div_(255.0)).clamp_(0.0, 1.0) for t, v in zip(self.transforms, views, strict=True)]


class ViewMaker:
    """Turns a batch of uint8 images (N, H, W) or (N, H, W, C) into ``config.num_views``
    augmented uint8 batches (N, C, S, S), S each view's size, as columns ``view0``, ``view1``,
    ... Used as a Ray Data ``map_batches`` callable. ``stage="crop"``: only each view's random
    crop (the training device does the rest, ``DeviceViews``).

    ``seed`` makes the views reproducible (same seed, same input -> same views); ``None`` draws
    fresh randomness each call, which is what training wants: new views every epoch.
    """

    def __init__(
        self,
        config: AugmentConfig,
        channels: int,
        seed: int | None = None,
        stage: Literal["all", "crop"] = "all",
    ):
        self.channels = channels
        self.seed = seed
        views = range(config.num_views)
        if stage == "crop":  # the rest runs on the training device (DeviceViews)
            self.transforms = [crop_transform(config, i) for i in views]
        else:
            self.transforms = [view_transform(config, channels, i) for i in views]
        torch.set_num_threads(1)  # Ray Data runs one of these per CPU; don't oversubscribe.

    def views(self, images: np.ndarray) -> list[torch.Tensor]:
        # Arrow-backed batches are read-only; torch wants a writable buffer.
        x = torch.from_numpy(images if images.flags.writeable else images.copy())
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x[:, : self.channels]
        x = x.float().div_(255.0)
        with torch.random.fork_rng(enabled=self.seed is not None):
            if self.seed is not None:
                torch.manual_seed(self.seed)
            outs = [t(x) for t in self.transforms]
        return [o.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8) for o in outs]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {f"view{i}": v.numpy() for i, v in enumerate(self.views(batch["image"]))}
        if "label" in batch:
            out["label"] = batch["label"]
        return out
