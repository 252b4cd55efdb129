"""The dense protocol's scores and head: mIoU and pixel accuracy against a hand computation,
the linear head recovering classes its features carry (and not those they do not), and every
registered method's encoder giving the feature map a dense head reads. The protocol end to
end: test_evaluate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_methods import small_config

from ssl_ray.eval.segment import confusion, fit_linear_head, predict, scores
from ssl_ray.methods import METHODS
from ssl_ray.nn.backbones import dense_map
from ssl_ray.train.build import build_method


def test_miou_and_pixel_accuracy_by_hand():
    truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    predicted = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0], [2, 2, 1, 2]])
    matrix = confusion(predicted, truth, 4)
    assert matrix.tolist() == [[3, 1, 0, 0], [1, 3, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]
    result = scores(matrix)
    # class 0: TP 3, FP 1, FN 1 -> 3/5; class 1: TP 3, FP 2, FN 1 -> 3/6; class 2: 3/4; class 3 unseen.
    assert result.iou == {0: 3 / 5, 1: 3 / 6, 2: 3 / 4}
    assert abs(result.miou - (3 / 5 + 3 / 6 + 3 / 4) / 3) < 1e-12
    assert result.pixel_accuracy == 9 / 12


def test_the_linear_head_reads_the_classes_its_features_carry():
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (40, 4, 4), generator=generator)
    masks = masks.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # 16 x 16, blocks of 4
    # Features at the 4 x 4 grid: the class one-hot, scaled and shifted (the head standardises),
    # with a noise channel.
    cells = masks[:, ::4, ::4]
    informative = F.one_hot(cells, 3).permute(0, 3, 1, 2).float() * 50 + 7
    noise = torch.randn(40, 1, 4, 4, generator=generator)
    head = fit_linear_head(torch.cat([informative, noise], dim=1), masks, 3, epochs=40, lr=0.05)
    test_masks = torch.randint(0, 3, (10, 4, 4), generator=generator)
    test_features = torch.cat(
        [F.one_hot(test_masks, 3).permute(0, 3, 1, 2).float() * 50 + 7, torch.randn(10, 1, 4, 4, generator=generator)],
        dim=1,
    )
    truth = test_masks.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    predicted = predict(head, test_features, (16, 16))
    good = scores(confusion(predicted, truth, 3))
    assert good.pixel_accuracy > 0.8 and good.miou > 0.65, good
    # Features without the classes: near chance.
    blind = fit_linear_head(torch.randn(40, 4, 4, 4, generator=generator), masks, 3, epochs=40, lr=0.05)
    chance = scores(confusion(predict(blind, torch.randn(10, 4, 4, 4, generator=generator), (16, 16)), truth, 3))
    assert chance.miou < 0.45, chance


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"distill"}))
def test_every_encoders_dense_map_pools_to_its_features(tmp_path, name):
    """The map a dense head reads comes from the same weights as the pooled features: its
    spatial mean is them wherever the encoder pools by a mean (ResNets, CMC's halves,
    colorization's L encoder, CPC's patch grid, mean-pooled ViTs)."""
    config = small_config(name, tmp_path)
    encoder = build_method(config).backbone.eval()
    size = 2 * config.augment.image_size  # scenes are larger than the crops it trained on
    if config.patch_grid is None and config.model.backbone.startswith("vit"):
        size -= size % config.model.patch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, config.data.channels, size, size), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        dense = dense_map(encoder, images)
        pooled = encoder(images)
    assert dense.ndim == 4 and dense.shape[0] == 3 and min(dense.shape[2:]) >= 1
    has_head = bool(config.encoder_head)
    token_pooled = config.model.backbone.startswith("vit") and config.model.vit_pool == "token"
    if not has_head and not token_pooled:
        torch.testing.assert_close(dense.mean(dim=(2, 3)), pooled, rtol=1e-4, atol=1e-5)
