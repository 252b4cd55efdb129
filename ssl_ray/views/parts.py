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

from ssl_ray.nn.feature_maps import grid_patches
from ssl_ray.sections import AugmentConfig

# Every source's rows carry their place in the training selection, 0..n-1, the same in every
# epoch and after a resume: what a per-image memory (PIRL's bank, DeepCluster's pseudo-labels)
# is indexed by.
SAMPLE_INDEX = "sample_index"


class RecipePart:
    """One kind of batch content beyond the views."""

    columns: ClassVar[tuple[str, ...]] = ()
    # Columns of uint8 images (N, k, C, S, S) that take view 0's colour recipe.
    image_columns: ClassVar[tuple[str, ...]] = ()
    # Columns the source gives each row (passed through, not made from the crops).
    source_columns: ClassVar[tuple[str, ...]] = ()

    def make(self, crops: list[torch.Tensor], boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The part's columns for a block, from each view's crop (N, C, S, S) after its flip,
        before colour, and each view's box (N, 4)."""
        raise NotImplementedError

    def refusal(self, augment: AugmentConfig, channels: int) -> str | None:
        """Why this part cannot be made from these views (``field: reason``), or None."""
        return None


class SampleIndex(RecipePart):
    """``sample_index`` (N,) int64: each image's place in the training selection (0..n-1)."""

    columns = (SAMPLE_INDEX,)
    source_columns = (SAMPLE_INDEX,)

    def make(self, crops: list[torch.Tensor], boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def __repr__(self) -> str:
        return "SampleIndex()"


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


def grid_tiles(view: torch.Tensor, grid: int, tile_fraction: float) -> torch.Tensor:
    """``view`` (N, C, S, S) cut into ``grid`` x ``grid`` cells, row by row; from each cell a
    square tile of ``tile_fraction`` of the cell's side at a random offset inside it, drawn per
    image and tile: (N, grid * grid, C, t, t). The gaps and the jitter keep a network from
    solving the pretext task by matching edges and lines across tiles (Doersch et al. 2015,
    Sec. 3; Noroozi & Favaro 2016, Sec. 3.1: 64 px tiles in 75 px cells)."""
    n, _, size, _ = view.shape
    cell = size // grid
    tile = max(1, int(cell * tile_fraction))
    cells = torch.arange(grid * grid)
    offsets = torch.randint(0, cell - tile + 1, (2, n, grid * grid))
    rows = ((cells // grid) * cell + offsets[0])[..., None] + torch.arange(tile)  # (N, g*g, t)
    cols = ((cells % grid) * cell + offsets[1])[..., None] + torch.arange(tile)
    images = torch.arange(n)[:, None, None, None]
    # Indices on both sides of the channel slice: their dimensions come first, (N, g*g, t, t, C).
    return view[images, :, rows[..., :, None], cols[..., None, :]].permute(0, 1, 4, 2, 3).contiguous()


class ShuffledTiles(RecipePart):
    """``tiles`` (N, g*g, C, t, t): view 0's grid of tiles (``grid_tiles``) in the order of
    one of ``permutations`` (P, g*g), drawn per image, and ``permutation`` (N,) int64: its
    index, the label Jigsaw classifies (Noroozi & Favaro 2016, Sec. 3): tile ``i`` of the
    batch is the image's tile ``permutations[p][i]``. ``permutations=None``: any order, drawn
    uniformly per image (PIRL's jigsaw transform), and ``permutation`` is -1."""

    columns = ("tiles", "permutation")
    image_columns = ("tiles",)

    def __init__(self, permutations: torch.Tensor | None, grid: int = 3, tile_fraction: float = 0.85) -> None:
        if permutations is not None and (permutations.ndim != 2 or permutations.shape[1] != grid * grid):
            raise ValueError(
                f"shuffled tiles: permutations of the {grid * grid} tiles, got {tuple(permutations.shape)}"
            )
        self.permutations = None if permutations is None else permutations.long()
        self.grid, self.tile_fraction = grid, tile_fraction

    def make(self, crops: list[torch.Tensor], boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        tiles = grid_tiles(crops[0], self.grid, self.tile_fraction)
        n = tiles.shape[0]
        if self.permutations is None:
            order, chosen = torch.rand(n, self.grid * self.grid).argsort(dim=1), torch.full((n,), -1)
        else:
            chosen = torch.randint(0, len(self.permutations), (n,))
            order = self.permutations[chosen]  # (N, g*g)
        return {"tiles": tiles[torch.arange(n)[:, None], order], "permutation": chosen}

    def refusal(self, augment: AugmentConfig, channels: int) -> str | None:
        return _tiles_fit(augment, self.grid, self.tile_fraction)

    def __repr__(self) -> str:
        count = "any order" if self.permutations is None else f"{len(self.permutations)} permutations"
        return f"ShuffledTiles({count}, grid={self.grid}, tile={self.tile_fraction})"


# The 8 neighbours of the centre of a 3 x 3 grid, as Doersch et al. 2015 number them (Fig. 2:
# row by row, the centre left out): the label ``location`` is the index into this list.
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)


class NeighbourPatches(RecipePart):
    """``patches`` (N, 2, C, t, t): view 0's centre tile and one of its 8 neighbours from a
    3 x 3 grid with gaps and jitter (``grid_tiles``), and ``location`` (N,) int64: which
    neighbour (0-7, ``NEIGHBOURS``), the label relative patch location classifies (Doersch et
    al. 2015, Sec. 3: 96 px patches half a patch apart, tile_fraction 2/3)."""

    columns = ("patches", "location")
    image_columns = ("patches",)

    def __init__(self, tile_fraction: float = 2 / 3) -> None:
        self.tile_fraction = tile_fraction

    def make(self, crops: list[torch.Tensor], boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        tiles = grid_tiles(crops[0], 3, self.tile_fraction)
        location = torch.randint(0, len(NEIGHBOURS), (tiles.shape[0],))
        neighbour = torch.tensor(NEIGHBOURS)[location]
        rows = torch.arange(tiles.shape[0])
        return {"patches": torch.stack([tiles[:, 4], tiles[rows, neighbour]], dim=1), "location": location}

    def refusal(self, augment: AugmentConfig, channels: int) -> str | None:
        return _tiles_fit(augment, 3, self.tile_fraction)

    def __repr__(self) -> str:
        return f"NeighbourPatches(tile={self.tile_fraction})"


# The encoder's small stem and four stages halve a tile three times; below this it sees a pixel.
MIN_TILE = 8


def _tiles_fit(augment: AugmentConfig, grid: int, tile_fraction: float) -> str | None:
    tile = int(augment.image_size // grid * tile_fraction)
    if tile < MIN_TILE:
        need = next(s for s in range(augment.image_size, 10_000) if int(s // grid * tile_fraction) >= MIN_TILE)
        return (
            f"augment.image_size: {augment.image_size} px views give {tile} px tiles ({grid} x {grid} grid, "
            f"{tile_fraction:.2f} of a cell), below {MIN_TILE}; use at least {need}"
        )
    return None


class PatchGrid(RecipePart):
    """``patches`` (N, g*g, C, p, p): view 0 cut into a g x g grid of overlapping ``patch`` px
    squares ``stride`` px apart, row by row, each flipped left-right on its own with
    probability ``flip_p`` (and, as an image column, colour-augmented on its own): CPC v2's
    patches and its per-patch augmentation (Hénaff et al. 2020, Sec. 4.1 and appendix A.2:
    64 px patches 32 px apart in a 240 px crop, augmented independently)."""

    columns = ("patches",)
    image_columns = ("patches",)

    def __init__(self, patch: int, stride: int, flip_p: float = 0.5) -> None:
        self.patch, self.stride, self.flip_p = patch, stride, flip_p

    def side(self, image_size: int) -> int:
        return (image_size - self.patch) // self.stride + 1

    def make(self, crops: list[torch.Tensor], boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        patches = grid_patches(crops[0], self.patch, self.stride)
        flip = torch.rand(patches.shape[:2]) < self.flip_p
        return {"patches": torch.where(flip[..., None, None, None], patches.flip(-1), patches).contiguous()}

    def refusal(self, augment: AugmentConfig, channels: int) -> str | None:
        if self.patch < MIN_TILE or self.side(augment.image_size) < 3:
            return (
                f"method.patch_size: {self.patch} px patches {self.stride} px apart need at least {MIN_TILE} px "
                f"patches and a grid of 3 rows in the {augment.image_size} px views (augment.image_size)"
            )
        return None

    def __repr__(self) -> str:
        return f"PatchGrid(patch={self.patch}, stride={self.stride}, flip_p={self.flip_p})"
