"""Which patches a masked image model hides: MAE's uniform random masks (He et al. 2022, Sec.
3) and BEiT's blockwise masks (Bao et al. 2022, Algorithm 1). A mask is (N, L) bool over the
grid's patches, row by row, True where a patch is hidden."""

from __future__ import annotations

import math

import numpy as np
import torch


def random_masks(n: int, patches: int, ratio: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's masks: ``round(ratio * patches)`` patches per image hidden, uniformly without
    replacement ("per-sample shuffling", Sec. 3). Returns the visible patches' indices (N, K)
    in ascending order and the mask (N, L)."""
    hidden = round(ratio * patches)
    if not 0 <= hidden < patches:
        raise ValueError(f"masking {ratio:.0%} of {patches} patches leaves none visible")
    order = torch.rand(n, patches, device=device).argsort(dim=1)
    visible = order[:, hidden:].sort(dim=1).values
    mask = torch.ones(n, patches, dtype=torch.bool, device=device)
    mask.scatter_(1, visible, False)
    return visible, mask


def blockwise_mask(
    h: int, w: int, ratio: float, min_block: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """BEiT's Algorithm 1 on an ``h`` x ``w`` grid: blocks of at least ``min_block`` patches
    with an aspect ratio drawn log-uniformly from [0.3, 1/0.3] at a random place, added until
    more than ``ratio`` of the patches are masked. A block's size s is drawn from
    [min_block, what is still to mask] (the paper's Rand(16, 0.4N - |M|)), so the mask stops
    within a block of the target; a block that does not fit the grid, or masks nothing new,
    is drawn again. Returns the mask (h, w) and the blocks (top, left, height, width)."""
    target = ratio * h * w
    if min_block > target or min_block > h * w:
        raise ValueError(f"blocks of {min_block} patches exceed {ratio:.0%} of a {h} x {w} grid")
    mask = np.zeros((h, w), dtype=bool)
    blocks: list[tuple[int, int, int, int]] = []
    for _ in range(100 * h * w):  # a bound, never reached: every fitting block masks something new
        if mask.sum() > target:
            break
        size = rng.uniform(min_block, max(min_block, target - mask.sum()))
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        height, width = round(math.sqrt(size * aspect)), round(math.sqrt(size / aspect))
        if not (1 <= height <= h and 1 <= width <= w) or height * width < min_block:
            continue
        top, left = int(rng.integers(0, h - height + 1)), int(rng.integers(0, w - width + 1))
        if mask[top : top + height, left : left + width].all():
            continue
        mask[top : top + height, left : left + width] = True
        blocks.append((top, left, height, width))
    return mask, blocks


def blockwise_masks(n: int, h: int, w: int, ratio: float, min_block: int, seed: int) -> torch.Tensor:
    """(N, h * w) bool: ``blockwise_mask`` for each of ``n`` images, from one seeded stream."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([blockwise_mask(h, w, ratio, min_block, rng)[0].ravel() for _ in range(n)]))


def scaled_min_block(patches: int) -> int:
    """BEiT's smallest block, 16 of the 196 patches of a 224 px image in 16 px patches, scaled
    to a grid of ``patches`` (at least one)."""
    return max(1, round(16 * patches / 196))
