"""CMC's own parts (Tian et al. 2019): the Lab conversion against scikit-image's on fixed
pixels, the cross-view loss by hand and on 2 gloo workers, the L/ab encoder, and the refusal of
1-channel data before anything starts. The method contract, the falling loss and the state
round-trip come from the registry-wide tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gloo import run_on_two_workers
from skimage.color import rgb2lab
from test_methods import small_config

from ssl_ray.config import ConfigError, config_from_dict
from ssl_ray.eval.finetune import finetune_config
from ssl_ray.eval.inference import EncoderSpec
from ssl_ray.nn.colour_split import LabSplit, lab_channels
from ssl_ray.nn.losses import CrossViewNCELoss
from ssl_ray.train.build import build_method

# sRGB pixels whose Lab values are known: black, white, mid gray, the primaries, a skin tone.
PIXELS = np.array(
    [[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255], [224, 172, 105]],
    dtype=np.uint8,
)


def test_lab_channels_match_scikit_image_on_fixed_pixels():
    images = torch.from_numpy(PIXELS).T.reshape(1, 3, 1, len(PIXELS))  # one 1 x 7 image
    lightness, colour = lab_channels(images)
    reference = rgb2lab(PIXELS[None].astype(np.float64) / 255.0)[0]  # (7, 3), D65
    assert reference[3].round(1).tolist() == [53.2, 80.1, 67.2]  # red, as tabulated for sRGB
    ours = torch.cat([lightness * 100.0, colour * 255.0 - 128.0], dim=1)[0, :, 0].T.double().numpy()
    np.testing.assert_allclose(ours, reference, atol=0.02)
    assert 0.0 <= lightness.min() and lightness.max() <= 1.0 and 0.0 <= colour.min() and colour.max() <= 1.0
    # uint8 and [0, 1] floats give the same channels.
    again = lab_channels(images.float() / 255.0)
    torch.testing.assert_close(again[0], lightness)
    torch.testing.assert_close(again[1], colour)


def test_cross_view_loss_by_hand():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    n1, n2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    tau = 0.5

    def one_way(a, b):  # -mean_i log softmax_j(a_i . b_j / tau)[i], written out
        total = 0.0
        for i in range(len(a)):
            scores = [float(a[i] @ b[j]) / tau for j in range(len(b))]
            total -= scores[i] - math.log(sum(math.exp(s) for s in scores))
        return total / len(a)

    expected = one_way(n1, n2) + one_way(n2, n1)
    assert CrossViewNCELoss(tau)(z1, z2).item() == pytest.approx(expected, rel=1e-6)


def _two_worker_loss(rank: int):
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True)
    rows = slice(4 * rank, 4 * rank + 4)
    loss = CrossViewNCELoss(0.2)(z1[rows], z2[rows])
    loss.backward()
    return loss.detach(), z1.grad, z2.grad


def test_two_gloo_workers_give_the_single_process_loss():
    """Every worker's other images are each anchor's negatives: the mean of the two workers'
    losses is the one-process loss of the whole batch, and gradients sum to its gradient."""
    results = run_on_two_workers(_two_worker_loss)
    (loss0, g1_0, g2_0), (loss1, g1_1, g2_1) = results[0], results[1]
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True)
    whole = CrossViewNCELoss(0.2)(z1, z2)
    whole.backward()
    assert ((loss0 + loss1) / 2).item() == pytest.approx(whole.item(), rel=1e-5)
    torch.testing.assert_close((g1_0 + g1_1) / 2, z1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close((g2_0 + g2_1) / 2, z2.grad, rtol=1e-4, atol=1e-6)


def test_the_encoder_is_two_half_width_resnets_on_l_and_ab(tmp_path):
    method = build_method(small_config("cmc", tmp_path))
    encoder = method.backbone
    assert isinstance(encoder, LabSplit) and encoder.dims == (32, 32)  # width 8 -> 4 each, 8 x 4
    assert encoder.luminance[1].conv1.in_channels == 1 and encoder.chroma[1].conv1.in_channels == 2
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    features = encoder(images)
    luminance, chroma = encoder.halves(images)
    assert features.shape == (4, 64) and torch.equal(features, torch.cat([luminance, chroma], dim=1))
    # Gray images have a = b = 0 whatever their lightness: the ab half sees the same input
    # for a dark and a light one, the L half tells them apart.
    encoder.eval()
    dark, light = (torch.full((1, 3, 28, 28), value, dtype=torch.uint8) for value in (40, 200))
    (l_dark, ab_dark), (l_light, ab_light) = encoder.halves(dark), encoder.halves(light)
    torch.testing.assert_close(ab_dark, ab_light)
    assert not torch.allclose(l_dark, l_light)


def test_one_channel_data_are_refused_naming_the_data(tmp_path):
    with pytest.raises(
        ConfigError, match=rf"method\.name: cmc encodes the L and ab channels .* at {tmp_path} .*data\.channels=3"
    ):
        config_from_dict({"method": {"name": "cmc"}, "data": {"path": str(tmp_path)}, "augment": {"global_crops": 1}})
    with pytest.raises(
        ConfigError, match=r"model\.backbone: the encoder that encodes the L and ab channels .* is built of ResNets"
    ):
        config_from_dict(
            {
                "method": {"name": "cmc"},
                "data": {"path": str(tmp_path), "channels": 3},
                "augment": {"global_crops": 1, "image_size": 32},
                "model": {"backbone": "vit_tiny"},
            }
        )


def test_the_evaluation_and_fine_tuning_build_the_same_l_ab_encoder(tmp_path):
    """What the evaluation's actors (``EncoderSpec``) and a fine-tuning run rebuild from the
    config is the pretrained L/ab encoder, with the trained weights."""
    config = small_config("cmc", tmp_path)
    method = build_method(config).eval()
    rebuilt = EncoderSpec.of("weights", config, method.backbone.state_dict()).build().eval()
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    torch.testing.assert_close(rebuilt(images), method.backbone(images))
    tuned = finetune_config(config, 0.1)
    assert tuned.method.name == "supervised" and tuned.colour_split == "lab"
    tuned = config_from_dict({**tuned.model_dump(mode="json"), "method": {"name": "supervised", "num_classes": 4}})
    assert isinstance(build_method(tuned).backbone, LabSplit)
