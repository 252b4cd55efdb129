"""Which feature-map positions of two views of an image show the same place of it.

By geometry (PixPro): each position's cell centre warped through its view's crop box
(``views.parts.CropBoxes``: the crop's edges in the source image, a flipped view's x edges
swapped) into source-image coordinates, and pairs closer than a threshold, measured in
feature-map cells. By features (DenseCL): each position's most similar one of the other view.

PixPro (Xie et al. 2021, Sec. 3.1, https://arxiv.org/abs/2011.10043) calls two positions a
positive pair when that distance, normalised by the diagonal of a feature-map cell, is below
T = 0.7; as its reference code, the cell of the coarser view of the two (the larger diagonal
in source coordinates) is the unit. Measured in cells, the threshold means the same on the
paper's 7 x 7 maps of 224 px crops and on the 4 x 4 maps of a 28 px image: about the one
nearest cell of the other view, more where that view is zoomed in.
"""

from __future__ import annotations

import torch


def cell_centres(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h * w, 2): each position's cell centre (x, y) in source-image fractions, row by row,
    of views cropped by ``boxes`` (N, 4) ``(x0, y0, x1, y1)``; a flipped view (x0 > x1) maps
    its left column to the source's right."""
    u = (torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5) / w
    v = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5) / h
    x0, y0, x1, y1 = boxes.float().unbind(dim=1)
    xs = x0[:, None] + u[None] * (x1 - x0)[:, None]  # (N, w)
    ys = y0[:, None] + v[None] * (y1 - y0)[:, None]  # (N, h)
    return torch.stack([xs[:, None, :].expand(-1, h, -1), ys[:, :, None].expand(-1, -1, w)], dim=-1).reshape(
        len(boxes), h * w, 2
    )


def cell_diagonals(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N,): the diagonal of one feature-map cell of each view, in source-image fractions."""
    x0, y0, x1, y1 = boxes.float().unbind(dim=1)
    return torch.sqrt(((x1 - x0) / w) ** 2 + ((y1 - y0) / h) ** 2)


def positive_pairs(boxes_a: torch.Tensor, boxes_b: torch.Tensor, h: int, w: int, threshold: float) -> torch.Tensor:
    """(N, h * w, h * w) bool: position i of view a and j of view b are a positive pair when
    their centres lie closer than ``threshold`` cells (the coarser view's) in the source image."""
    distance = torch.cdist(cell_centres(boxes_a, h, w), cell_centres(boxes_b, h, w))
    unit = torch.maximum(cell_diagonals(boxes_a, h, w), cell_diagonals(boxes_b, h, w))
    return distance / unit[:, None, None] < threshold


def most_similar_positions(query_maps: torch.Tensor, key_maps: torch.Tensor) -> torch.Tensor:
    """(N, h * w) long: for each position of a query map (N, D, h, w), the position of the
    key map of the same image whose feature is the most cosine-similar (DenseCL, Wang et al.
    2021, Eq. 3, https://arxiv.org/abs/2011.09157: matched on the backbone's features, no
    geometry). The maps may differ in size; ties go to the first position."""
    queries = torch.nn.functional.normalize(query_maps.flatten(2).float(), dim=1)
    keys = torch.nn.functional.normalize(key_maps.flatten(2).float(), dim=1)
    return torch.bmm(queries.transpose(1, 2), keys).argmax(dim=2)


def gather_positions(maps: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(N, D, L): the features of ``maps`` (N, D, h, w) at ``positions`` (N, L)."""
    flat = maps.flatten(2)
    return torch.gather(flat, 2, positions[:, None, :].expand(-1, flat.shape[1], -1))
