"""View recipes: per-sample random augmentations applied to whole batches (kornia).

Split in two stages so the same recipe can run wholly on CPUs inside Ray Data, or with only
the geometry there and the colour part on the GPU: the geometric stage (each view's random
resized crop, then its flip; the crop boxes come from it) always runs in Ray Data, the
photometric one (``colour_transform``) in Ray Data or on the training device.

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

from ssl_ray.sections import AugmentConfig
from ssl_ray.views.colour import RandomColourJitter
from ssl_ray.views.parts import RecipePart


def crop_transform(config: AugmentConfig, view: int = 0) -> nn.Module:
    """The geometric part that must run where images still have their own sizes: view
    ``view``'s random resized crop (global or local, by its size and scale), what Ray Data
    does when the rest runs on the GPU."""
    size = config.view_size(view)
    return K.RandomResizedCrop((size, size), scale=config.view_crop_scale(view))


def crop_box(crop: nn.Module, height: int, width: int) -> torch.Tensor:
    """The box (N, 4) the last call of ``crop`` (a kornia RandomResizedCrop) cut from each
    image: ``(x0, y0, x1, y1)``, the crop's outer edges as fractions of the image's width and
    height (``views.parts``). kornia's corners are pixel indices, inclusive."""
    corners = crop._params["src"]  # (N, 4, 2): top-left, top-right, bottom-right, bottom-left; (x, y)
    x0, y0 = corners[:, 0, 0], corners[:, 0, 1]
    x1, y1 = corners[:, 2, 0] + 1, corners[:, 2, 1] + 1
    return torch.stack([x0 / width, y0 / height, x1 / width, y1 / height], dim=1)


def flip_at_random(images: torch.Tensor, p: float, boxes: torch.Tensor) -> torch.Tensor:
    """Each image mirrored left-right with probability ``p``; a mirrored image's box (N, 4),
    changed in place, swaps its x edges, so positions across the view still map into the
    image through it."""
    flipped = torch.rand(images.shape[0]) < p
    boxes[flipped] = boxes[flipped][:, [2, 1, 0, 3]]
    return torch.where(flipped[:, None, None, None], images.flip(-1), images)


def colour_transform(config: AugmentConfig, channels: int, view: int = 0) -> nn.Module:
    """The photometric rest of the recipe, on same-size float images in [0, 1], on any device:
    colour jitter, grayscale, blur and solarize, each with its own random parameters per image."""
    s = config.strength
    steps: list[nn.Module] = []
    if s > 0 and config.jitter_p > 0:
        colour = (0.8 * s, 0.2 * s) if channels == 3 else (0.0, 0.0)
        # One affine colour map per image (views/colour.py): kornia's HSV-based ColorJitter is
        # most of the recipe's cost at 224 px (benchmarks/README.md).
        steps.append(RandomColourJitter(0.8 * s, 0.8 * s, colour[0], colour[1], p=config.jitter_p))
    if channels == 3 and config.grayscale_p > 0:
        steps.append(K.RandomGrayscale(p=config.grayscale_p))
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
    flip = K.RandomHorizontalFlip(p=config.flip_p)
    return nn.Sequential(crop_transform(config, view), flip, *colour_transform(config, channels, view))


class DeviceViews(nn.Module):
    """The colour part of every view's recipe, for batches already on the training device.

    With ``augment.on: device`` Ray Data only decodes, crops and flips (``ViewMaker(stage="crop")``,
    uint8); this turns each view's uint8 batch into augmented floats in [0, 1] where the model
    runs, drawing every image's parameters independently, in fp32. Nothing here moves a pixel,
    so the crop boxes drawn in Ray Data stay right.
    """

    def __init__(self, config: AugmentConfig, channels: int) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(colour_transform(config, channels, i) for i in range(config.num_views))

    @torch.no_grad()
    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.colour(i, v) for i, v in enumerate(views)]

    @torch.no_grad()
    def colour(self, view: int, images: torch.Tensor) -> torch.Tensor:
        """View ``view``'s colour recipe on uint8 images (..., C, S, S); a recipe part's images
        (N, k, C, S, S) take view 0's, every image its own draw."""
        return coloured(self.transforms[view], images)


def coloured(transform: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``transform`` (a colour recipe) on uint8 images (..., C, S, S), as floats in [0, 1] of
    the same shape; every image its own draw. Clamped: the blur's float sums can overshoot 1."""
    flat = images.reshape(-1, *images.shape[-3:]).float().div_(255.0)
    return transform(flat).clamp_(0.0, 1.0).reshape(images.shape)


class ViewMaker:
    """Turns a batch of uint8 images (N, H, W) or (N, H, W, C) into ``config.num_views``
    augmented uint8 batches (N, C, S, S), S each view's size, as columns ``view0``, ``view1``,
    ..., and the columns of any recipe ``parts`` (``views.parts``). Used as a Ray Data
    ``map_batches`` callable. ``stage="crop"``: only each view's random crop and flip (the
    training device does the colour, ``DeviceViews``).

    ``seed`` makes the views reproducible (same seed, same input -> same views); ``None`` draws
    fresh randomness each call, which is what training wants: new views every epoch.
    """

    def __init__(
        self,
        config: AugmentConfig,
        channels: int,
        seed: int | None = None,
        stage: Literal["all", "crop"] = "all",
        parts: tuple[RecipePart, ...] = (),
    ):
        self.channels = channels
        self.seed = seed
        self.flip_p = config.flip_p
        self.parts = parts
        views = range(config.num_views)
        self.crops = [crop_transform(config, i) for i in views]
        # The colour stage; None: it runs on the training device (DeviceViews).
        self.colours = None if stage == "crop" else [colour_transform(config, channels, i) for i in views]
        torch.set_num_threads(1)  # Ray Data runs one of these per CPU; don't oversubscribe.

    def views(self, images: np.ndarray) -> list[torch.Tensor]:
        return self.make(images)[0]

    def make(self, images: np.ndarray) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The views (uint8) and the parts' columns of one batch of images."""
        # Arrow-backed batches are read-only; torch wants a writable buffer.
        x = torch.from_numpy(images if images.flags.writeable else images.copy())
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x[:, : self.channels]
        x = x.float().div_(255.0)
        height, width = x.shape[-2:]
        with torch.random.fork_rng(enabled=self.seed is not None):
            if self.seed is not None:
                torch.manual_seed(self.seed)
            crops, boxes = [], []
            for crop in self.crops:
                view = crop(x)
                boxes.append(crop_box(crop, height, width))
                crops.append(flip_at_random(view, self.flip_p, boxes[-1]))
            crops = [_to_uint8(c) for c in crops]
            parts = {name: value for part in self.parts for name, value in part.make(crops, boxes).items()}
            if self.colours is None:
                return crops, parts
            views = [_to_uint8(coloured(colour, c)) for colour, c in zip(self.colours, crops, strict=True)]
            for name in (name for part in self.parts for name in part.image_columns):
                parts[name] = _to_uint8(coloured(self.colours[0], parts[name]))
        return views, parts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        views, parts = self.make(batch["image"])
        out = {f"view{i}": v.numpy() for i, v in enumerate(views)}
        out.update({name: value.numpy() for name, value in parts.items()})
        if "label" in batch:
            out["label"] = batch["label"]
        for name in (name for part in self.parts for name in part.source_columns):
            if name not in batch:
                raise KeyError(f"the recipe needs the source's {name!r} column; the rows have {sorted(batch)}")
            out[name] = batch[name]
        return out


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
