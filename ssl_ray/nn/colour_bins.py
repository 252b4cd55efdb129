"""Colour as classes (Zhang et al. 2016, "Colorful Image Colorization", Sec. 2.1-2.3,
https://arxiv.org/abs/1603.08511): the ab plane of CIE Lab quantised on a grid of side 10,
the bins in the sRGB gamut kept; each pixel's colour soft-encoded over its 5 nearest bins
(Gaussian, sigma 5); the class-rebalancing weights from the training set's smoothed bin
histogram (Eq. 4); and the annealed mean that turns a predicted distribution back into a
colour (Eq. 5, T = 0.38).

The gamut is computed here rather than read from the paper's file (``pts_in_hull.npy``, 313
bins, not downloadable here): the grid cells that some colour of a 64^3 sampling of the sRGB
cube falls in under kornia's D65 conversion, 261 of them. The paper's count was taken with
another conversion and sampling; the bins a natural image uses are the same either way.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from kornia.color import lab_to_rgb, rgb_to_lab

from ssl_ray.nn.feature_maps import unit_pixels

BIN_SIDE = 10.0  # the grid's spacing in ab units (Sec. 2.1)
_GRID_HALF = 11  # centres at -110, -100, ..., 110 on each axis: |a|, |b| < 115 for sRGB
_GRID = 2 * _GRID_HALF + 1


def _grid_cell(ab: torch.Tensor) -> torch.Tensor:
    """Index of each colour's nearest grid centre, a * 23 + b; ``ab`` (..., 2) in Lab units."""
    cells = torch.round(ab / BIN_SIDE).long().clamp(-_GRID_HALF, _GRID_HALF) + _GRID_HALF
    return cells[..., 0] * _GRID + cells[..., 1]


@functools.cache
def _gamut() -> tuple[torch.Tensor, torch.Tensor]:
    """(centres (Q, 2) of the in-gamut bins, lookup (23 * 23,) grid cell -> nearest bin)."""
    steps = torch.linspace(0.0, 1.0, 64)
    rgb = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(rgb)[0, 1:, :, 0].T  # (64^3, 2)
    used = torch.unique(_grid_cell(ab))
    axis = (torch.arange(_GRID, dtype=torch.float32) - _GRID_HALF) * BIN_SIDE
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    centres = grid[used]
    # A colour the sampling missed whose cell is outside the kept bins goes to the nearest kept.
    lookup = torch.cdist(grid, centres).argmin(dim=1)
    return centres, lookup


def ab_bins() -> torch.Tensor:
    """The in-gamut bins' centres (Q, 2), in Lab units, in a fixed order."""
    return _gamut()[0].clone()


def lab_of(images: torch.Tensor) -> torch.Tensor:
    """CIE Lab (N, 3, H, W), L in 0..100 and ab in Lab units, of uint8 or [0, 1] RGB images."""
    return rgb_to_lab(unit_pixels(images).clamp(0.0, 1.0))


def nearest_bin(ab: torch.Tensor) -> torch.Tensor:
    """Each pixel's bin, (N, H, W) int64, of ``ab`` (N, 2, H, W)."""
    return _gamut()[1].to(ab.device)[_grid_cell(ab.movedim(1, -1))]


def bin_histogram(ab: torch.Tensor) -> torch.Tensor:
    """Pixels per bin of each image, (N, Q) float32, of ``ab`` (N, 2, H, W)."""
    bins = nearest_bin(ab).flatten(1)
    counts = torch.zeros(bins.shape[0], len(_gamut()[0]), device=ab.device)
    return counts.scatter_add_(1, bins, torch.ones_like(bins, dtype=counts.dtype))


def soft_encode(ab: torch.Tensor, neighbours: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """The soft target Z (N, Q, H, W) of ``ab`` (N, 2, H, W): each pixel's ``neighbours``
    nearest bins weighted by a Gaussian of their distance (Sec. 2.1), summing to 1."""
    centres = _gamut()[0].to(ab.device)
    pixels = ab.movedim(1, -1).reshape(-1, 2)
    distance, nearest = torch.cdist(pixels, centres).topk(neighbours, dim=1, largest=False)
    weights = torch.softmax(-distance.square() / (2 * sigma**2), dim=1)
    n, _, h, w = ab.shape
    target = torch.zeros(pixels.shape[0], len(centres), device=ab.device).scatter_(1, nearest, weights)
    return target.view(n, h, w, -1).permute(0, 3, 1, 2)


def rebalancing_weights(counts: torch.Tensor, mix: float = 0.5, sigma: float = 5.0) -> torch.Tensor:
    """Eq. 4: w proportional to ((1 - lambda) p~ + lambda / Q)^-1 and normalised so that
    E_p~[w] = sum_q p~_q w_q = 1, with p~ the bins' empirical distribution (``counts`` (Q,))
    smoothed by a Gaussian of ``sigma`` in the ab plane (mass-preserving) and lambda = ``mix``."""
    centres = _gamut()[0].to(counts.device)
    p = counts.double() / counts.sum().clamp_min(1)
    kernel = torch.exp(-torch.cdist(centres, centres).double().square() / (2 * sigma**2))
    smoothed = (kernel / kernel.sum(dim=0, keepdim=True)) @ p  # column r spreads bin r's mass
    weights = 1.0 / ((1 - mix) * smoothed + mix / len(centres))
    return (weights / (smoothed * weights).sum()).float()


def annealed_mean(logits: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """Eq. 5: the colour (N, 2, H, W) of each pixel's predicted distribution (N, Q, H, W of
    logits) re-sharpened to ``temperature`` (f_T(z) = exp(log z / T) / sum, i.e. softmax of
    logits / T) and averaged over the bins' centres: between the mode's vivid and the mean's
    grey colours."""
    centres = _gamut()[0].to(logits.device)
    probabilities = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("nqhw,qc->nchw", probabilities, centres)


def colourised(images: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """``images``' L channel with the colour ``ab`` (N, 2, h, w), upsampled to the images' size:
    RGB in [0, 1], (N, 3, H, W)."""
    lightness = lab_of(images)[:, :1]
    ab = F.interpolate(ab, size=lightness.shape[-2:], mode="bilinear", align_corners=False)
    return lab_to_rgb(torch.cat([lightness, ab], dim=1)).clamp(0.0, 1.0)
