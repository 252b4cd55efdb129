"""BEiT (Bao et al. 2022): blockwise masks as Algorithm 1 draws them, the smallest block
scaled to the grid, the k-means tokenizer (deterministic codes, nearest by hand), the loss on
masked positions only and by hand, the mask token in place of masked patches, and the refusal
of a ResNet. The method contract, the falling loss and the state round trip come from the
registry-wide tests; a Ray Train run that fits the tokenizer, logs it and resumes from
test_pretrain_e2e (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_methods import small_config

from ssl_ray.config import ConfigError, config_from_dict
from ssl_ray.nn.losses import MaskedTokenLoss
from ssl_ray.nn.masking import blockwise_mask, blockwise_masks, scaled_min_block
from ssl_ray.nn.patch_tokenizer import fit_codebook, tokenize
from ssl_ray.train.build import build_method


def test_the_smallest_block_is_the_papers_share_of_the_grid():
    assert scaled_min_block(196) == 16 and scaled_min_block(49) == 4 and scaled_min_block(36) == 3
    assert scaled_min_block(4) == 1


@pytest.mark.parametrize("h, w, min_block", [(14, 14, 16), (7, 7, 4), (6, 8, 3)])
def test_blockwise_masks_follow_algorithm_1(h, w, min_block):
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(200):
        mask, blocks = blockwise_mask(h, w, 0.4, min_block, rng)
        union = np.zeros_like(mask)
        for top, left, height, width in blocks:
            # Each block a rectangle inside the grid of at least the smallest block's patches,
            # of an aspect within [0.3, 1/0.3] up to rounding to whole patches.
            assert 0 <= top and top + height <= h and 0 <= left and left + width <= w
            assert height * width >= min_block
            assert 0.3 * (width - 0.5) / (height + 0.5) <= 1 and (height - 0.5) / (width + 0.5) <= 1 / 0.3
            union[top : top + height, left : left + width] = True
        assert np.array_equal(union, mask)  # the mask is the blocks' union and nothing else
        # Blocks are added until more than 40% are masked; the last one adds at most what was
        # still to mask, or the smallest block, plus its rounding.
        share = mask.mean()
        assert 0.4 < share <= 0.4 + (max(min_block, 0.4 * h * w) + h + w) / (h * w), share
        shares.append(share)
    assert 0.4 < np.mean(shares) < 0.5


def test_blockwise_masks_are_seeded_and_differ_per_image():
    first, again = blockwise_masks(16, 7, 7, 0.4, 4, seed=3), blockwise_masks(16, 7, 7, 0.4, 4, seed=3)
    assert first.shape == (16, 49) and first.dtype == torch.bool and torch.equal(first, again)
    assert len({tuple(row.tolist()) for row in first}) == 16
    assert not torch.equal(first, blockwise_masks(16, 7, 7, 0.4, 4, seed=4))
    with pytest.raises(ValueError, match="blocks of 30 patches exceed 40% of a 7 x 7 grid"):
        blockwise_masks(1, 7, 7, 0.4, 30, seed=0)


def test_the_tokenizer_gives_each_patch_its_nearest_code_deterministically():
    torch.manual_seed(0)
    patches = torch.rand(3000, 16)
    codebook = fit_codebook(patches, 32, iterations=10, seed=5)
    assert codebook.shape == (32, 16)
    torch.testing.assert_close(fit_codebook(patches, 32, iterations=10, seed=5), codebook)  # same fit
    tokens = tokenize(patches.view(30, 100, 16), codebook)
    assert tokens.shape == (30, 100) and tokens.dtype == torch.int64
    assert torch.equal(tokenize(patches.view(30, 100, 16), codebook), tokens)  # same codes
    by_hand = ((patches.double()[:, None] - codebook.double()[None]) ** 2).sum(-1).argmin(dim=1)
    assert torch.equal(tokens.flatten(), by_hand)
    assert torch.equal(tokenize(codebook, codebook), torch.arange(32))  # a code is its own token
    with pytest.raises(ValueError, match="a codebook of 32 codes needs at least as many patches, got 10"):
        fit_codebook(patches[:10], 32)


def test_the_loss_is_on_the_masked_positions_only_and_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 10, requires_grad=True)
    tokens = torch.randint(0, 10, (2, 6))
    mask = torch.tensor([[True, False, False, True, False, False], [False, True, True, True, False, False]])
    loss = MaskedTokenLoss()(logits, tokens, mask)
    log_p = logits.detach().double().log_softmax(-1).numpy()
    by_hand = -np.mean([log_p[n, i, tokens[n, i]] for n in range(2) for i in range(6) if mask[n, i]])
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    loss.backward()
    assert torch.equal(logits.grad.abs().sum(-1) > 0, mask)


def test_masked_patches_reach_the_encoder_as_the_mask_token_only(tmp_path):
    method = build_method(small_config("beit", tmp_path)).eval()  # 8 px patches of 48 px crops
    images = torch.randint(0, 256, (2, 1, 48, 48), dtype=torch.uint8)
    mask = blockwise_masks(2, 6, 6, 0.4, 3, seed=0)
    encoded, same_mask = method.encode_masked(images, mask)
    assert encoded.shape == (2, 36, 192) and torch.equal(same_mask, mask)
    pixels = mask.view(2, 6, 6).repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
    changed = images.clone()
    changed[:, 0][pixels] = 255 - changed[:, 0][pixels]
    torch.testing.assert_close(method.encode_masked(changed, mask)[0], encoded)
    shown = images.clone()
    shown[:, 0][~pixels] = 255 - shown[:, 0][~pixels]
    assert not torch.allclose(method.encode_masked(shown, mask)[0], encoded)
    # With nothing masked the mask token is nowhere: the encoder's own tokens.
    nothing = torch.zeros_like(mask)
    assert not torch.allclose(method.encode_masked(images, nothing)[0], encoded)


def test_a_resnet_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.backbone: beit predicts masked patches' tokens with a ViT"):
        config_from_dict({"method": {"name": "beit"}, "data": {"path": str(tmp_path)}, "augment": {"global_crops": 1}})
