"""Projection and prediction heads, all built by one MLP builder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(
    dims: list[int], last_bn: bool = False, hidden_bn: bool = True, activation: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """Linear -> BN -> activation for each hidden layer, then a plain Linear (optionally with BN).

    ``dims`` lists every width, input first: ``[512, 2048, 128]`` is a 2-layer MLP, and
    ``[512, 128]`` a linear map. ``hidden_bn=False`` drops the hidden BN (MoCo v2's head);
    ``activation`` is ReLU but for DINO's head (GELU).
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output widths, got {dims}")
    layers = list(hidden_layers(dims[:-1], hidden_bn, activation))
    layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)


def hidden_layers(dims: list[int], bn: bool = True, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear -> BN -> activation from each width in ``dims`` to the next (``dims[0]`` is the
    input): an MLP's hidden layers, and the head layers an encoder may keep (SimCLR v2)."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip(dims[:-1], dims[1:]):
        if bn:
            layers += [nn.Linear(width_in, width_out, bias=False), nn.BatchNorm1d(width_out)]
        else:
            layers.append(nn.Linear(width_in, width_out))
        layers.append(activation())
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, Sec. 3.1 and appendix): "a 3-layer multi-layer
    perceptron (MLP) with hidden dimension 2048 followed by l2 normalization and a weight
    normalized fully connected layer with K dimensions". The MLP ends in a ``bottleneck_dim``
    (256) layer; the last layer has no bias and, with ``norm_last_layer`` (the reference
    code's default), its weight norm held at 1, so only its direction learns (logits are
    cosines); without it the norms learn too. GELU, and no BN unless ``hidden_bn``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        hidden_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = mlp([in_dim, hidden_dim, hidden_dim, bottleneck_dim], hidden_bn=hidden_bn, activation=nn.GELU)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        norm = self.last_layer.parametrizations.weight.original0  # the weight norm g, (out_dim, 1)
        with torch.no_grad():
            norm.fill_(1.0)
        norm.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class TileFusion(nn.Module):
    """Late fusion of tiles encoded one by one by the shared encoder (the "siamese" networks of
    Doersch et al. 2015, Fig. 3, and Noroozi & Favaro 2016, Fig. 3): each tile's features
    through the same linear layer to ``tile_dim`` (their fc6), concatenated in the tiles'
    order, then ``mlp([tiles * tile_dim, *head_dims])`` (fc7, fc8). Features (N, T, D)."""

    def __init__(self, feature_dim: int, tiles: int, tile_dim: int, head_dims: list[int]) -> None:
        super().__init__()
        self.per_tile = nn.Sequential(
            nn.Linear(feature_dim, tile_dim, bias=False), nn.BatchNorm1d(tile_dim), nn.ReLU(inplace=True)
        )
        self.head = mlp([tiles * tile_dim, *head_dims])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, tiles, dim = features.shape
        return self.head(self.per_tile(features.reshape(n * tiles, dim)).view(n, -1))


class HypercolumnHead(nn.Module):
    """A per-pixel classifier on an encoder's stage feature maps (``nn.feature_maps``): each
    map taken to ``dim`` channels by a 1x1 conv (BN, ReLU) and resized to ``size``, the sum
    through a 3x3 conv (BN, ReLU) and a 1x1 conv to ``classes`` logits, (N, classes, size,
    size). The hypercolumns of Larsson et al. 2016 ("Learning Representations for Automatic
    Colorization", Sec. 3, https://arxiv.org/abs/1603.06668): fine and coarse stages both
    reach every pixel, where a small encoder's last map alone is a few cells wide."""

    def __init__(self, widths: list[int], dim: int, classes: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
            for width in widths
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)
        )
        self.classify = nn.Conv2d(dim, classes, 1)

    def forward(self, maps: list[torch.Tensor], size: int) -> torch.Tensor:
        fused = sum(
            F.interpolate(lateral(m), size=(size, size), mode="bilinear", align_corners=False)
            for lateral, m in zip(self.lateral, maps)
        )
        return self.classify(self.fuse(fused))


def pixel_mlp(dims: list[int], hidden_bn: bool = True) -> nn.Sequential:
    """``mlp`` at every position of a feature map (N, C, h, w): 1x1 convolutions, BN and ReLU
    between them (PixPro's projector: Xie et al. 2021, Sec. 3.1); without the BN, DenseCL's
    dense projection head (Wang et al. 2021, Sec. 3.2)."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip(dims[:-2], dims[1:-1]):
        if hidden_bn:
            layers += [nn.Conv2d(width_in, width_out, 1, bias=False), nn.BatchNorm2d(width_out), nn.ReLU()]
        else:
            layers += [nn.Conv2d(width_in, width_out, 1), nn.ReLU()]
    layers.append(nn.Conv2d(dims[-2], dims[-1], 1))
    return nn.Sequential(*layers)


class PixelPropagation(nn.Module):
    """PixPro's pixel propagation module (Xie et al. 2021, Eq. 3-4): each position's feature
    replaced by y_i = sum_j s(x_i, x_j) g(x_j) over the positions j of the same map, with
    s(x_i, x_j) = max(cos(x_i, x_j), 0)^gamma (a smoothing of the features of similar places)
    and g a linear map (a 1x1 convolution with BN and ReLU before it for ``layers`` 2; the
    paper's best is one layer, Table 3)."""

    def __init__(self, dim: int, gamma: float = 2.0, layers: int = 1) -> None:
        super().__init__()
        self.gamma = gamma
        self.transform = pixel_mlp([dim] * (layers + 1))

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, L) s(x_i, x_j) of a map (N, D, h, w)."""
        unit = F.normalize(x.flatten(2), dim=1)
        return torch.bmm(unit.transpose(1, 2), unit).clamp_min(0).pow(self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self.transform(x).flatten(2)  # (N, D, L)
        return torch.bmm(values, self.similarity(x).transpose(1, 2)).view_as(x)
