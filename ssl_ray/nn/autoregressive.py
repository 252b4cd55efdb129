"""CPC's context network over a grid of patch vectors (van den Oord et al. 2018, Sec. 3;
Hénaff et al. 2020, appendix A.2): a PixelCNN-style stack whose output at row i depends on the
rows at and above i only, so it can predict the rows below without seeing them.

The masked convolutions are convolutions padded above and not below: a kernel of ``rows``
rows at output row i reads input rows i - rows + 1 .. i, which is a full kernel whose rows
below the centre are masked to zero (the PixelCNN mask, van den Oord et al. 2016), at no cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RowCausalConv2d(nn.Conv2d):
    """A ``rows`` x ``cols`` convolution whose output row i sees input rows <= i only; the
    width is padded on both sides (``cols`` odd), so the grid keeps its size."""

    def __init__(self, channels_in: int, channels_out: int, rows: int = 2, cols: int = 3) -> None:
        super().__init__(channels_in, channels_out, (rows, cols))
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.cols // 2, self.cols // 2, self.rows - 1, 0)))


class _CausalBlock(nn.Module):
    """The bottleneck residual block of the context network: 1x1, masked 2x3, 1x1."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(dim, hidden, 1),
            nn.ReLU(),
            RowCausalConv2d(hidden, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ContextNetwork(nn.Module):
    """(N, D, g, g) patch vectors -> (N, D, g, g) contexts, c_ij a function of rows <= i."""

    def __init__(self, dim: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_CausalBlock(dim, hidden) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
