"""A ViT encoder (``nn.backbones.build_vit``) taken apart into its steps, for the methods that
work on its tokens: embed the patches, add the positions and the class token, run the blocks.
MAE encodes only the visible patches' tokens; BEiT swaps masked patches' embeddings for a mask
token before the positions are added. ``encoder(images)`` is these steps with nothing removed
(tested), so what is pretrained is what the evaluations run.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _vit(encoder: nn.Sequential):
    return encoder[1]


def patch_embeddings(encoder: nn.Sequential, images: torch.Tensor) -> torch.Tensor:
    """Each patch's embedding before positions, (N, h, w, D), of uint8 or [0, 1] images."""
    return _vit(encoder).patch_embed(encoder[0](images))


def with_positions(encoder: nn.Sequential, patches: torch.Tensor) -> torch.Tensor:
    """The class token prepended and the position embeddings (resampled to the grid) added:
    (N, 1 + h * w, D) of ``patches`` (N, h, w, D). timm's own step (``_pos_embed``), so any
    grid size passes as in the full forward."""
    return _vit(encoder)._pos_embed(patches)


def transformer(encoder: nn.Sequential, tokens: torch.Tensor) -> torch.Tensor:
    """The blocks and the last norm over ``tokens`` (N, T, D): any subset of a grid's tokens."""
    vit = _vit(encoder)
    return vit.norm(vit.blocks(vit.norm_pre(tokens)))


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, h * p, w * p) -> (N, h * w, p * p * C): each patch's pixels, patches row by row
    (the order of the ViT's tokens), a patch's pixels row by row with channels last (MAE's).
    Rows and columns past the last whole patch are left out (a tokenizer fitted to images of
    another size than the crops)."""
    n, c, height, width = images.shape
    h, w = height // patch, width // patch
    x = images[:, :, : h * patch, : w * patch].reshape(n, c, h, patch, w, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, h * w, patch * patch * c)


def sincos_positions(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (h * w, dim): half the channels for the
    row, half for the column, each half sines and cosines of frequencies 1/10000^(2i/d) (He et
    al. 2022's decoder; Vaswani et al. 2017's 1-D form on each axis)."""
    if dim % 4:
        raise ValueError(f"sine-cosine positions need a width divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )

    def axis(position: torch.Tensor) -> torch.Tensor:
        angles = position.reshape(-1, 1) * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([axis(rows), axis(cols)], dim=1)


def grid_side(tokens: int) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} patch tokens are not a square grid")
    return side
