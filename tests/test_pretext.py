"""The pretext tasks' batch parts and labels against hand computations: RotNet's rotations,
Jigsaw's tiles and permutation set, relative location's neighbours, and the late fusion of tiles."""

import itertools

import pytest
import torch

from ssl_ray.config import ConfigError, config_from_dict
from ssl_ray.nn.heads import TileFusion
from ssl_ray.views.parts import NEIGHBOURS, NeighbourPatches, RotatedCopies, ShuffledTiles, grid_tiles
from ssl_ray.views.permutations import maximal_hamming_permutations, minimum_hamming_distance


def position_image(n: int, size: int) -> torch.Tensor:
    """(n, 1, size, size) whose every pixel holds its own index ``row * size + col`` (and the
    image's, in the thousands' place): where a tile came from can be read off its pixels."""
    pixels = torch.arange(size * size).view(1, 1, size, size)
    return pixels + 100_000 * torch.arange(n).view(n, 1, 1, 1)


def cell_of(tile: torch.Tensor, size: int, cell: int) -> tuple[int, int]:
    """The (row, col) of the grid cell a tile of ``position_image`` was cut from."""
    corner = int(tile[0, 0, 0]) % 100_000
    return (corner // size) // cell, (corner % size) // cell


def test_a_rotated_copys_label_is_its_rotation():
    torch.manual_seed(0)
    view = torch.randint(0, 256, (6, 1, 10, 10), dtype=torch.uint8)
    out = RotatedCopies(copies=4).make([view], [torch.zeros(6, 4)])
    assert out["rotated"].shape == (6, 4, 1, 10, 10) and out["rotation"].dtype == torch.int64
    for i, j in itertools.product(range(6), range(4)):
        turns = int(out["rotation"][i, j])
        assert torch.equal(out["rotated"][i, j], torch.rot90(view[i], turns, dims=(1, 2)))
    # All four turns of every image, each once.
    assert (out["rotation"].sort(dim=1).values == torch.arange(4)).all()
    # Fewer copies: distinct turns, still labelled by what was done.
    two = RotatedCopies(copies=2).make([view], [torch.zeros(6, 4)])
    assert two["rotated"].shape[1] == 2 and (two["rotation"][:, 0] != two["rotation"][:, 1]).all()


def test_grid_tiles_lie_inside_their_cells_with_gaps():
    torch.manual_seed(0)
    size, grid, fraction = 30, 3, 0.7  # cells of 10 px, tiles of 7: 3 px of jitter
    view = position_image(8, size)
    tiles = grid_tiles(view, grid, fraction)
    assert tiles.shape == (8, 9, 1, 7, 7)
    offsets = set()
    for i, t in itertools.product(range(8), range(9)):
        tile = tiles[i, t]
        corner = int(tile[0, 0, 0]) - 100_000 * i
        row, col = divmod(corner, size)
        assert (row // 10, col // 10) == divmod(t, grid)  # row by row
        assert row % 10 + 7 <= 10 and col % 10 + 7 <= 10  # inside the cell
        expected = view[i, :, row : row + 7, col : col + 7]  # a contiguous square of the view
        assert torch.equal(tile, expected)
        offsets.add((row % 10, col % 10))
    assert len(offsets) > 10  # jittered: not one offset for all


def test_shuffled_tiles_follow_the_permutation_they_are_labelled_with():
    torch.manual_seed(1)
    size = 36
    permutations = maximal_hamming_permutations(10)
    out = ShuffledTiles(permutations, grid=3, tile_fraction=0.8).make([position_image(12, size)], [])
    assert out["tiles"].shape == (12, 9, 1, 9, 9)
    for i in range(12):
        order = permutations[int(out["permutation"][i])]
        cells = [cell_of(out["tiles"][i, t], size, 12) for t in range(9)]
        assert cells == [divmod(int(o), 3) for o in order]  # tile t is the image's tile order[t]
    assert len(set(out["permutation"].tolist())) > 3


def test_relative_location_pairs_the_centre_with_the_neighbour_it_names():
    torch.manual_seed(2)
    size = 48
    out = NeighbourPatches(tile_fraction=2 / 3).make([position_image(40, size)], [])
    assert out["patches"].shape == (40, 2, 1, 10, 10)
    for i in range(40):
        assert cell_of(out["patches"][i, 0], size, 16) == (1, 1)
        assert cell_of(out["patches"][i, 1], size, 16) == divmod(NEIGHBOURS[int(out["location"][i])], 3)
    assert set(out["location"].tolist()) == set(range(8))
    # The paper's numbering: row by row around the centre.
    assert [divmod(n, 3) for n in NEIGHBOURS] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]


def test_permutation_set_has_the_minimum_distance_it_claims():
    permutations = maximal_hamming_permutations(100)
    assert permutations.shape == (100, 9)
    assert all(sorted(p.tolist()) == list(range(9)) for p in permutations)  # permutations of the 9 tiles
    by_hand = min(sum(a != b for a, b in zip(p, q)) for p, q in itertools.combinations(permutations.tolist(), 2))
    assert minimum_hamming_distance(permutations) == by_hand == 6  # as its docstring says
    # Greedy farthest-point: far above what 100 random permutations give.
    random = torch.stack([torch.randperm(9, generator=torch.Generator().manual_seed(s)) for s in range(100)])
    assert minimum_hamming_distance(random) < by_hand
    assert torch.equal(maximal_hamming_permutations(100, seed=0), permutations)  # the same labels on a resume
    with pytest.raises(ValueError, match="2 to 362880"):
        maximal_hamming_permutations(1)


def test_tile_fusion_reads_the_tiles_in_order():
    torch.manual_seed(0)
    fusion = TileFusion(feature_dim=8, tiles=3, tile_dim=4, head_dims=[16, 5]).eval()
    features = torch.randn(2, 3, 8)
    out = fusion(features)
    assert out.shape == (2, 5)
    assert not torch.allclose(out, fusion(features[:, [2, 0, 1]]))  # the order is what it classifies


@pytest.mark.parametrize(
    ("method", "augment", "message"),
    [
        ("jigsaw", {"global_crops": 1, "image_size": 28}, "augment.image_size: 28 px views give 7 px tiles"),
        ("relative_location", {"global_crops": 1, "image_size": 32}, "augment.image_size"),
        ("rotnet", {}, "augment.global_crops / augment.local_crops: rotnet takes one view"),
    ],
)
def test_a_pretext_task_refuses_views_it_cannot_use(method, augment, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"method": {"name": method}, "data": {"path": str(tmp_path)}, "augment": augment})
