"""Which patches a masked image model hides: MAE's uniform random masks (He et al. 2022, Sec.
3) and BEiT's blockwise masks (Bao et al. 2022, Algorithm 1). A mask is (N, L) bool over the
grid's patches, row by row, True where a patch is hidden."""

from __future__ import annotations

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
