"""Multi-crop forward passes: one encoder call per crop size, not one per crop.

Crops of one size are concatenated into one batch (what DINO's ``MultiCropWrapper`` does), so
2 global + 6 local crops cost two encoder calls, and BatchNorm sees all crops of a size together.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def forward_by_size(encode: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[encode(v) for v in views]``, computed with one call per run of same-size views.

    Views arrive global crops first, then local ones, so each size is one consecutive run.
    """
    outputs: list[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
            end += 1
        encoded = encode(torch.cat(views[start:end]))
        outputs.extend(encoded.chunk(end - start))
        start = end
    return outputs
