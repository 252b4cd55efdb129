"""PixPro (Xie et al. 2021): the positions two views share found through their crop boxes
(flips included), the propagation module and the consistency loss against hand computations,
and only the pairs' cosines reaching the loss. The method contract, the falling loss, the EMA
target and the state round trip come from the registry-wide tests (test_methods); a Ray Train
run with resume from test_pretrain_e2e (slow)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_ray.nn.dense_matching import cell_centres, cell_diagonals, positive_pairs
from ssl_ray.nn.heads import PixelPropagation
from ssl_ray.nn.losses import PixelConsistencyLoss


def test_cell_centres_follow_the_box_and_its_flip():
    box = torch.tensor([[0.2, 0.0, 0.6, 0.8]])
    centres = cell_centres(box, 2, 2)[0]
    assert torch.allclose(centres, torch.tensor([[0.3, 0.2], [0.5, 0.2], [0.3, 0.6], [0.5, 0.6]]))
    flipped = cell_centres(box[:, [2, 1, 0, 3]], 2, 2)[0]  # the view mirrored: its left column is the right
    assert torch.allclose(flipped, torch.tensor([[0.5, 0.2], [0.3, 0.2], [0.5, 0.6], [0.3, 0.6]]))


def test_positive_pairs_are_the_same_places_of_the_image():
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    same = positive_pairs(whole, whole, 4, 4, 0.7)[0]
    assert torch.equal(same, torch.eye(16, dtype=torch.bool)), (
        "a cell is a pair with itself only (neighbours 1 cell off)"
    )
    mirrored = positive_pairs(whole, whole[:, [2, 1, 0, 3]], 4, 4, 0.7)[0]
    for i in range(16):  # row r, column c of view a is row r, column 3 - c of the flipped view b
        r, c = divmod(i, 4)
        assert mirrored[i].nonzero().flatten().tolist() == [4 * r + (3 - c)]
    # The left half stretched: its cells are half as wide (0.125 of the image). The unit is the
    # coarser view's cell diagonal (0.354), so 0.7 of it is 0.247: a whole-view cell pairs with
    # the two narrow cells inside it (0.0625 off) and the next narrow one (0.1875), in its row.
    left = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    zoomed = positive_pairs(whole, left, 4, 4, 0.7)[0]
    assert zoomed[0].nonzero().flatten().tolist() == [0, 1, 2]
    assert zoomed.sum(dim=1)[[0, 1, 4, 5]].tolist() == [3, 3, 3, 3]
    assert zoomed[[3, 7, 11, 15]].sum() == 0, "the whole view's right column is far from the left crop"
    assert zoomed[2].nonzero().flatten().tolist() == [3], "across the crop's edge: its last column, 0.1875 off"
    apart = positive_pairs(torch.tensor([[0.0, 0.0, 0.3, 1.0]]), torch.tensor([[0.7, 0.0, 1.0, 1.0]]), 4, 4, 0.7)
    assert not apart.any(), "views of places apart share no position"


def test_pixel_propagation_by_hand():
    module = PixelPropagation(2, gamma=2.0)
    with torch.no_grad():  # g the identity: y_i = sum_j max(cos, 0)^2 x_j
        module.transform[0].weight.copy_(torch.eye(2)[:, :, None, None])
        module.transform[0].bias.zero_()
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]).T.reshape(1, 2, 1, 3)  # 3 positions
    y = module(x)[0, :, 0].T
    # cos: (0,1) 1/sqrt2, (0,2) 0, (1,2) -1/sqrt2 -> weights squared after clamping at 0.
    expected = torch.stack(
        [
            torch.tensor([1.0, 0.0]) + 0.5 * torch.tensor([1.0, 1.0]),
            0.5 * torch.tensor([1.0, 0.0]) + torch.tensor([1.0, 1.0]),
            torch.tensor([0.0, -1.0]),
        ]
    )
    torch.testing.assert_close(y, expected)


def test_the_consistency_loss_is_minus_the_mean_cosine_of_the_pairs_only():
    torch.manual_seed(0)
    y = torch.randn(2, 8, 2, 2, requires_grad=True)
    target = torch.randn(2, 8, 2, 2, requires_grad=True)
    pairs = torch.zeros(2, 4, 4, dtype=torch.bool)
    pairs[0, 0, 3] = pairs[0, 1, 1] = pairs[1, 2, 0] = True
    loss = PixelConsistencyLoss()(y, target, pairs)
    flat_y, flat_t = y.flatten(2), target.flatten(2)
    by_hand = (
        -(
            F.cosine_similarity(flat_y[0, :, 0], flat_t[0, :, 3], dim=0)
            + F.cosine_similarity(flat_y[0, :, 1], flat_t[0, :, 1], dim=0)
            + F.cosine_similarity(flat_y[1, :, 2], flat_t[1, :, 0], dim=0)
        )
        / 3
    )
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    assert target.grad is None, "no gradient reaches the target"
    reached = y.grad.flatten(2).abs().sum(dim=1) > 0  # (N, L): the positions of view a in a pair
    assert reached.tolist() == [[True, True, False, False], [False, False, True, False]]
    none = PixelConsistencyLoss()(y, target, torch.zeros_like(pairs))
    assert none.item() == 0.0 and none.requires_grad


def test_matched_positions_of_two_real_views_read_the_same_source_pixels():
    """Through the real view maker (crop, flip, resize): each view of a coordinate image
    pooled to a 4 x 4 map, its cells' mean column and row read back from the pixels; they are
    the cell centres its crop box says, and a positive pair's two cells show nearly the same
    place (closer than the threshold, in the coarser view's cells)."""
    from test_recipes import PLAIN, SIDE, coordinate_images

    from ssl_ray.views.parts import CropBoxes
    from ssl_ray.views.recipe import BatchRecipe

    recipe = BatchRecipe(PLAIN, parts=(CropBoxes(),))
    views, parts = recipe.view_maker(channels=3, stage="all", seed=3).make(coordinate_images(64))
    boxes = parts["crop_boxes"]
    kept = (views[0][:, 0, 0, 0] != views[0][:, 1, 0, 0]) & (views[1][:, 0, 0, 0] != views[1][:, 1, 0, 0])

    def read_places(view):  # (n, 16, 2): each cell's mean (x, y) in fractions of the source
        cells = F.avg_pool2d(view[kept, :2].float(), 4).flatten(2).transpose(1, 2)
        return (cells / 4 + 0.5) / SIDE

    places = [read_places(v) for v in views]
    for v in range(2):
        torch.testing.assert_close(places[v], cell_centres(boxes[kept, v], 4, 4), atol=2 / SIDE, rtol=0)
    pairs = positive_pairs(boxes[kept, 0], boxes[kept, 1], 4, 4, 0.7)
    assert pairs.any(dim=(1, 2)).sum() >= 10, "crops of 10-60% of the image overlap in many images"
    unit = torch.maximum(*(cell_diagonals(boxes[kept, v], 4, 4) for v in range(2)))
    apart = torch.cdist(places[0], places[1]) / unit[:, None, None]
    assert (apart[pairs] < 0.7 + 0.15).all() and (apart[~pairs] > 0.7 - 0.15).all()


def _pixpro(instance_weight: float):
    from ssl_ray.methods import METHODS
    from ssl_ray.nn.backbones import build_backbone
    from ssl_ray.sections import AugmentConfig

    cls = METHODS["pixpro"]
    params = cls.Params(name="pixpro", projection_hidden_dim=16, projection_dim=8, instance_weight=instance_weight)
    torch.manual_seed(0)
    encoder, width = build_backbone("resnet18", 1, width=8, blocks=(1, 1, 1, 1), stem_stride=1)
    return cls(params, encoder, width, cls.recipe(params, AugmentConfig(image_size=28)))


def test_the_instance_branch_adds_byols_loss_of_the_pooled_maps_with_its_weight():
    """Off by default (no instance heads, no target of them); on, the loss is the pixel loss
    plus the weight times BYOL's symmetrised 2 - 2 cos(p, z') of the pooled maps, each view's
    prediction against the EMA target's projection of the other, whose head is a target too."""
    from test_methods import batch_for

    from ssl_ray.nn.backbones import dense_map

    plain = _pixpro(0.0).eval()
    assert not hasattr(plain, "instance_projector") and plain.targets.online == ("backbone", "projector")
    batch = batch_for(plain, n=6)
    pixel_only = plain(batch)["loss"]
    combined = _pixpro(0.5).eval()  # the same seed: the same backbone and pixel heads
    assert combined.targets.online == ("backbone", "projector", "instance_projector")
    with torch.no_grad():
        n = batch.size
        both = torch.cat(batch.views)
        p = combined.instance_predictor(
            combined.instance_projector(dense_map(combined.backbone, both).mean(dim=(2, 3)))
        )
        z = combined.target_instance_projector(dense_map(combined.target_backbone, both).mean(dim=(2, 3)))
        byol = sum(
            2 - 2 * F.cosine_similarity(p[a], z[b], dim=1).mean()
            for a, b in ((slice(0, n), slice(n, None)), (slice(n, None), slice(0, n)))
        )
        torch.testing.assert_close(combined(batch)["loss"], pixel_only + 0.5 * byol)
