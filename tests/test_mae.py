"""MAE (He et al. 2022): the random masks' ratio and shape, the ViT taken apart giving the
encoder's own features, the encoder seeing the visible patches only, the loss on the hidden
patches only and by hand, patchify's order, the decoder's positions, and the refusal of a
ResNet. The method contract, the falling loss and the state round trip come from the
registry-wide tests; a Ray Train run with a resume from test_pretrain_e2e."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_methods import small_config

from ssl_ray.config import ConfigError, config_from_dict
from ssl_ray.nn.backbones import build_vit
from ssl_ray.nn.losses import MaskedPatchLoss
from ssl_ray.nn.masking import random_masks
from ssl_ray.nn.vit_tokens import patch_embeddings, patchify, sincos_positions, transformer, with_positions
from ssl_ray.train.build import build_method


def test_random_masks_hide_the_asked_share_of_each_image_independently():
    torch.manual_seed(0)
    visible, mask = random_masks(64, 49, 0.75)
    assert mask.shape == (64, 49) and mask.dtype == torch.bool and visible.shape == (64, 12)
    assert (mask.sum(dim=1) == 37).all()  # round(0.75 * 49)
    assert (visible.diff(dim=1) > 0).all()  # ascending: the grid's order
    assert not mask.gather(1, visible).any()  # the visible are exactly the unmasked
    assert len({tuple(row.tolist()) for row in visible}) == 64  # per image, not one shared mask
    # Over many images every patch is hidden about as often (uniform, 75%).
    _, many = random_masks(4000, 49, 0.75)
    assert many.float().mean(dim=0).sub(0.75).abs().max() < 0.04
    with pytest.raises(ValueError, match="leaves none visible"):
        random_masks(2, 4, 0.9)


@pytest.mark.parametrize("pool", ["token", "mean"])
def test_the_vit_taken_apart_gives_the_encoders_own_features(pool):
    torch.manual_seed(0)
    encoder, _ = build_vit("vit_tiny", 1, 28, 4, depth=2, pool=pool)
    encoder.eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        tokens = transformer(encoder, with_positions(encoder, patch_embeddings(encoder, images)))
        expected = tokens[:, 0] if pool == "token" else tokens[:, 1:].mean(dim=1)
        torch.testing.assert_close(encoder(images), expected)
    assert tokens.shape == (3, 1 + 49, 192)


def test_patchify_orders_patches_row_by_row_with_channels_last():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = patchify(images, 2)  # a 2 x 3 grid of 2 px patches
    assert patches.shape == (2, 6, 12)
    # Patch 4 is row 1, column 1: pixels (2..3, 2..3); its first entries are pixel (2, 2)'s channels.
    assert patches[0, 4, :3].tolist() == images[0, :, 2, 2].tolist()
    assert patches[0, 4, 3:6].tolist() == images[0, :, 2, 3].tolist()
    assert patches[1, 4, 6:9].tolist() == images[1, :, 3, 2].tolist()


def test_sine_cosine_positions():
    positions = sincos_positions(3, 5, 16)
    assert positions.shape == (15, 16)
    # Token 7 is row 1, column 2: the row half's first frequency is 1, the column half's too.
    assert positions[7, 0].item() == pytest.approx(np.sin(1.0)) and positions[7, 4].item() == pytest.approx(np.cos(1.0))
    assert positions[7, 8].item() == pytest.approx(np.sin(2.0)) and positions[7, 12].item() == pytest.approx(
        np.cos(2.0)
    )
    assert len(torch.unique(positions, dim=0)) == 15


def test_the_loss_is_on_normalised_pixels_of_the_hidden_patches_only():
    torch.manual_seed(0)
    predicted = torch.randn(2, 5, 12, requires_grad=True)
    target = torch.rand(2, 5, 12)
    mask = torch.tensor([[True, False, True, False, False], [False, False, False, True, True]])
    loss = MaskedPatchLoss()(predicted, target, mask)
    p, t = predicted.detach().double().numpy(), target.double().numpy()
    t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    by_hand = ((p - t) ** 2).mean(-1)[mask.numpy()].mean()
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    loss.backward()
    touched = predicted.grad.abs().sum(dim=-1) > 0
    assert torch.equal(touched, mask)  # the visible patches' predictions get no gradient
    raw = MaskedPatchLoss(normalise=False)(predicted, target, mask)
    assert raw.item() == pytest.approx(((p - target.double().numpy()) ** 2).mean(-1)[mask.numpy()].mean(), rel=1e-5)


def test_the_encoder_sees_the_visible_patches_only(tmp_path):
    method = build_method(small_config("mae", tmp_path)).eval()  # 8 px patches of 48 px crops
    images = torch.randint(0, 256, (2, 1, 48, 48), dtype=torch.uint8)
    torch.manual_seed(3)
    encoded, visible, mask, grid = method.encode_visible(images)
    assert grid == (6, 6) and encoded.shape[1] == 1 + 9 and mask.sum(dim=1).tolist() == [27, 27]
    # New pixels in every hidden patch: under the same mask, the same encoding.
    changed = images.clone()
    hidden = mask.view(2, 6, 6).repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
    changed[:, 0][hidden] = 255 - changed[:, 0][hidden]
    torch.manual_seed(3)
    again, same_visible, _, _ = method.encode_visible(changed)
    assert torch.equal(visible, same_visible)
    torch.testing.assert_close(again, encoded)
    # ... and a change in a visible patch changes it.
    shown = changed.clone()
    shown[:, 0][~hidden] = 255 - shown[:, 0][~hidden]
    torch.manual_seed(3)
    assert not torch.allclose(method.encode_visible(shown)[0], encoded)


def test_a_resnet_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.backbone: mae encodes the visible patches with a ViT, and resnet18"):
        config_from_dict({"method": {"name": "mae"}, "data": {"path": str(tmp_path)}, "augment": {"global_crops": 1}})
