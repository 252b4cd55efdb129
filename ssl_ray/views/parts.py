"""What a batch can carry beyond its views: the parts of a batch recipe.

A part is made in Ray Data, block by block, from the views' geometric stage (each view's
random crop and flip, uint8) and the crop boxes that stage drew. It names its columns; those
holding images (``image_columns``, uint8 (N, k, C, S, S)) also get view 0's colour recipe, in
Ray Data or on the training device wherever the views get theirs. The next kinds (tiles and
patch grids with their positions, an L/ab split, a patch mask) are parts like these: the loop
and the data sources carry any part's columns without knowing it.

Crop boxes are ``(x0, y0, x1, y1)`` in the decoded image's coordinates normalised to [0, 1]
(the image the recipe crops from, ``data.decode_size`` square): the view's left edge sits at
x0 and its right edge at x1. A flipped view has x0 > x1, so a position u in [0, 1] across the
view is at ``x0 + u * (x1 - x0)`` in the image either way: what matching the positions of two
views needs (PixPro, Xie et al. 2021, Sec. 3.1).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ssl_ray.sections import AugmentConfig


class RecipePart:
    """One kind of batch content beyond the views."""

    columns: ClassVar[tuple[str, ...]] = ()
    # Columns of uint8 images (N, k, C, S, S) that take view 0's colour recipe.
    image_columns: ClassVar[tuple[str, ...]] = ()

    def make(self, crops: list[torch.Tensor], boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The part's columns for a block, from each view's crop (N, C, S, S) after its flip,
        before colour, and each view's box (N, 4)."""
        raise NotImplementedError

    def refusal(self, augment: AugmentConfig, channels: int) -> str | None:
        """Why this part cannot be made from these views (``field: reason``), or None."""
        return None


class CropBoxes(RecipePart):
    """``crop_boxes`` (N, V, 4) float32: every view's box, in the order of the views."""

    columns = ("crop_boxes",)

    def make(self, crops: list[torch.Tensor], boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"crop_boxes": torch.stack(boxes, dim=1).float()}


class RotatedCopies(RecipePart):
    """``rotated`` (N, k, C, S, S): view 0 turned by k of the four quarter turns, drawn in a
    random order per image, and ``rotation`` (N, k) int64: each copy's quarter turns
    counter-clockwise (0-3), the label RotNet classifies (Gidaris et al. 2018, Sec. 3.2; the
    paper's best batches hold all four rotations of every image: ``copies=4``)."""

    columns = ("rotated", "rotation")
    image_columns = ("rotated",)

    def __init__(self, copies: int = 4) -> None:
        if not 1 <= copies <= 4:
            raise ValueError(f"rotated copies: 1 to 4 of the quarter turns, got {copies}")
        self.copies = copies

    def make(self, crops: list[torch.Tensor], boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        view = crops[0]
        turns = torch.rand(view.shape[0], 4).argsort(dim=1)[:, : self.copies]
        all_four = torch.stack([torch.rot90(view, k, dims=(2, 3)) for k in range(4)], dim=1)  # (N, 4, C, S, S)
        rotated = all_four[torch.arange(view.shape[0])[:, None], turns]
        return {"rotated": rotated, "rotation": turns.long()}

    def __repr__(self) -> str:
        return f"RotatedCopies(copies={self.copies})"
