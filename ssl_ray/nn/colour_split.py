"""CMC's encoder (Tian et al. 2019, "Contrastive Multiview Coding", Sec. 4.1,
https://arxiv.org/abs/1906.05849): an RGB image converted to CIE Lab, its L channel and its ab
channels encoded by two networks of half the width each, the representation their features
concatenated (the paper's {L, ab} split of a ResNet); and colourisation's encoder, which reads
the L channel only (``LuminanceOnly``). The conversion sits in the encoder, so
the kept, evaluated and exported encoders take RGB images as every other one does."""

from __future__ import annotations

import torch
from torch import nn

from ssl_ray.nn.colour_bins import lab_of
from ssl_ray.nn.feature_maps import stage_feature_maps

# Lab's ranges for sRGB in [0, 1]: L 0..100, a and b within -128..127; mapped to [0, 1], which
# each half's ImageInput then maps to [-1, 1] like any image.
_L_RANGE = 100.0
_AB_LOW, _AB_SPAN = -128.0, 255.0


def lab_channels(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, ab)``, (N, 1, H, W) and (N, 2, H, W) in [0, 1], of uint8 or [0, 1] RGB (N, 3, H, W)."""
    lab = lab_of(images)
    return lab[:, :1] / _L_RANGE, (lab[:, 1:] - _AB_LOW) / _AB_SPAN


class LabSplit(nn.Module):
    """RGB images (N, 3, H, W) -> ``[f_L, f_ab]`` (N, D_L + D_ab); ``halves`` gives the two."""

    def __init__(self, luminance: nn.Module, luminance_dim: int, chroma: nn.Module, chroma_dim: int) -> None:
        super().__init__()
        self.luminance, self.chroma = luminance, chroma
        self.dims = (luminance_dim, chroma_dim)

    def halves(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lightness, colour = lab_channels(images)
        return self.luminance(lightness), self.chroma(colour)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.halves(images), dim=1)

    def dense_map(self, images: torch.Tensor) -> torch.Tensor:
        """Both halves' last feature maps, side by side on the channels (N, D_L + D_ab, h, w)."""
        lightness, colour = lab_channels(images)
        return torch.cat(
            [stage_feature_maps(self.luminance, lightness)[-1], stage_feature_maps(self.chroma, colour)[-1]], 1
        )


class LuminanceOnly(nn.Module):
    """RGB images (N, 3, H, W) -> the features of their L channel alone (Zhang et al. 2016's
    colourisation network sees L and nothing else). ``feature_maps`` gives the stages' maps of
    the same pass, for a dense head."""

    def __init__(self, luminance: nn.Module) -> None:
        super().__init__()
        self.luminance = luminance

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        return stage_feature_maps(self.luminance, lab_channels(images)[0])

    def dense_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_maps(images)[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.luminance(lab_channels(images)[0])
