"""What an encoder reads and makes below its pooled features: a ResNet's feature maps before
pooling (what dense heads read: colourisation's per-pixel colour distribution; pixel-level
methods and dense evaluation after it), and the grid of patches a patch encoder reads."""

from __future__ import annotations

import torch
from torch import nn


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] of uint8 images (0-255), or of floats already in [0, 1]."""
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


def stage_feature_maps(encoder: nn.Sequential, images: torch.Tensor) -> list[torch.Tensor]:
    """The four stages' outputs (N, C_i, H_i, W_i) of ``nn.backbones.build_backbone``'s encoder
    (``ImageInput`` then a torchvision ResNet), the same weights its pooled features come from."""
    image_input, net = encoder[0], encoder[1]
    x = net.maxpool(net.relu(net.bn1(net.conv1(image_input(images)))))
    maps = []
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = stage(x)
        maps.append(x)
    return maps


def stage_widths(encoder: nn.Sequential) -> list[int]:
    """Channels of each of the four stages' outputs: the last BatchNorm of each stage."""
    net = encoder[1]
    widths = []
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
        widths.append(norms[-1].num_features)
    return widths


def grid_patches(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, g_h * g_w, C, patch, patch): the overlapping ``patch`` px squares
    ``stride`` px apart, row by row (CPC's patch grid)."""
    n, c = images.shape[:2]
    grid = images.unfold(2, patch, stride).unfold(3, patch, stride)  # (N, C, g_h, g_w, p, p)
    return grid.permute(0, 2, 3, 1, 4, 5).reshape(n, -1, c, patch, patch)
