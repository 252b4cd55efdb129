"""CPC v2 (Hénaff et al. 2020): the patch grid and its per-patch augmentation, the context
network that cannot see the rows it predicts (a gradient test), the targets k rows below, the
InfoNCE by hand, and the refusal of patches that do not fit. The method contract, the falling
loss and the state round trip come from the registry-wide tests; a Ray Train run with a
resume from test_pretrain_e2e (slow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_methods import small_config

from ssl_ray.config import ConfigError, config_from_dict
from ssl_ray.eval.finetune import finetune_config
from ssl_ray.eval.inference import EncoderSpec
from ssl_ray.nn.autoregressive import ContextNetwork, RowCausalConv2d
from ssl_ray.nn.losses import ContrastivePredictionLoss
from ssl_ray.sections import AugmentConfig
from ssl_ray.train.build import build_method
from ssl_ray.views.parts import PatchGrid
from ssl_ray.views.recipe import ONE_VIEW, BatchRecipe


def test_the_grid_holds_each_overlapping_patch_row_by_row():
    view = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    grid = PatchGrid(8, 5, flip_p=0.0)
    patches = grid.make([view], [torch.zeros(2, 4)])["patches"]
    assert grid.side(28) == 5 and patches.shape == (2, 25, 3, 8, 8)
    for i in range(5):
        for j in range(5):
            assert torch.equal(patches[:, i * 5 + j], view[:, :, 5 * i : 5 * i + 8, 5 * j : 5 * j + 8])
    flipped = PatchGrid(8, 5, flip_p=1.0).make([view], [torch.zeros(2, 4)])["patches"]
    assert torch.equal(flipped, patches.flip(-1))
    torch.manual_seed(0)
    some = PatchGrid(8, 5, flip_p=0.5).make([view], [torch.zeros(2, 4)])["patches"]
    each = [torch.equal(some[n, k], patches[n, k]) for n in range(2) for k in range(25)]
    assert 10 < sum(each) < 40  # flipped patch by patch, not image by image


def test_each_patch_takes_its_own_colour_draw():
    """A flat gray image: every patch is the same before colour; after it, they differ."""
    augment = AugmentConfig(image_size=28, global_crops=1, strength=1.0, jitter_p=1.0, grayscale_p=0.0, flip_p=0.0)
    recipe = BatchRecipe(augment, ONE_VIEW, (PatchGrid(8, 5, flip_p=0.0),))
    images = np.full((4, 28, 28, 3), 128, dtype=np.uint8)
    images[..., 0] = 200  # some colour for the jitter to move
    patches = recipe.batch_of(images, channels=3, seed=0)["patches"]  # (4, 25, 3, 8, 8)
    means = patches.float().mean(dim=(3, 4))  # each patch is flat: its colour
    assert len(torch.unique(means[0].round(), dim=0)) > 10


def test_the_context_at_a_row_sees_that_row_and_the_rows_above_only():
    torch.manual_seed(0)
    network = ContextNetwork(dim=6, hidden=8, blocks=3)
    grid = torch.randn(1, 6, 6, 6, requires_grad=True)
    out = network(grid)
    for row in range(6):
        (gradient,) = torch.autograd.grad(out[0, :, row, 3].sum(), grid, retain_graph=True)
        reach = gradient.abs().sum(dim=(0, 1, 3))  # per input row
        assert (reach[row + 1 :] == 0).all(), (row, reach)  # nothing from the rows it predicts
        assert reach[row] > 0 and (row == 0 or reach[row - 1] > 0)
    # One masked convolution: a 2 x 3 kernel at output row i reads rows i-1 and i.
    conv = RowCausalConv2d(1, 1)
    x = torch.zeros(1, 1, 4, 5, requires_grad=True)
    (gradient,) = torch.autograd.grad(conv(x)[0, 0, 2, 2], x)
    assert torch.equal(gradient[0, 0].ne(0).nonzero()[:, 0].unique(), torch.tensor([1, 2]))


def test_each_prediction_targets_the_patch_k_rows_below(tmp_path):
    method = build_method(small_config("cpc_v2", tmp_path, prediction_steps=3))
    n, side, dim = 2, 4, method.feature_dim
    steps = method.predictions(torch.randn(n, dim, side, side))
    assert len(steps) == 3
    for k, (predictions, positive) in enumerate(steps, start=1):
        sources = [(m, i, j) for m in range(n) for i in range(side - k) for j in range(side)]
        assert predictions.shape == (len(sources), dim)
        assert positive.tolist() == [m * side * side + (i + k) * side + j for m, i, j in sources]


def test_the_infonce_by_hand():
    torch.manual_seed(0)
    predictions, targets = torch.randn(5, 4), torch.randn(7, 4)
    positive = torch.tensor([0, 3, 6, 2, 2])
    p, t = predictions.double().numpy(), targets.double().numpy()

    def by_hand(scores):
        return np.mean([-(scores[m, positive[m]] - np.log(np.exp(scores[m]).sum())) for m in range(5)])

    assert ContrastivePredictionLoss(None)(predictions, targets, positive).item() == pytest.approx(by_hand(p @ t.T))
    cosines = (p / np.linalg.norm(p, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    loss = ContrastivePredictionLoss(0.1)(predictions, targets, positive)
    assert loss.item() == pytest.approx(by_hand(cosines / 0.1), rel=1e-6)
    # Every target alike: chance, log of the targets' count.
    flat = ContrastivePredictionLoss(0.1)(predictions, torch.ones(7, 4), positive)
    assert flat.item() == pytest.approx(math.log(7), rel=1e-6)


def test_patches_that_do_not_fit_the_views_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"method\.patch_size: 20 px patches 5 px apart need .* 3 rows in the 28 px"):
        config_from_dict(
            {
                "method": {"name": "cpc_v2", "patch_size": 20, "patch_stride": 5},
                "data": {"path": str(tmp_path)},
                "augment": {"global_crops": 1},
            }
        )


def test_the_kept_encoder_averages_its_features_over_the_patch_grid(tmp_path):
    """What is evaluated, exported and fine-tuned reads the image as training did: the grid of
    patches (without their augmentation), each encoded alone, their features averaged."""
    config = small_config("cpc_v2", tmp_path, patch_size=12, patch_stride=12)  # 48 px: a 4 x 4 grid
    assert config.patch_grid == (12, 12)
    method = build_method(config).eval()
    images = torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        pooled = method.backbone(images)
        tiles = [images[:, :, 12 * i : 12 * i + 12, 12 * j : 12 * j + 12] for i in range(4) for j in range(4)]
        by_hand = torch.stack([method.backbone.encoder(t) for t in tiles]).mean(dim=0)
        torch.testing.assert_close(pooled, by_hand)
        rebuilt = EncoderSpec.of("weights", config, method.backbone.state_dict()).build().eval()
        torch.testing.assert_close(rebuilt(images), pooled)
    tuned = finetune_config(config, 0.1)
    assert tuned.method.name == "supervised" and tuned.patch_grid == (12, 12)
