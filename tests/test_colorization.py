"""Colorization (Zhang et al. 2016): the ab bins and a pixel's bin, the bin histogram and the
rebalancing weights of a synthetic image whose colours are known, the soft targets, the loss
and the annealed mean by hand, the fitted weights on two gloo workers, the L-only encoder, and
the refusal of 1-channel data. The method contract, the falling loss and the state round trip
come from the registry-wide tests; its Ray Train run with a resume, its colour count and its
picture from test_pretrain_e2e."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gloo import run_on_two_workers
from kornia.color import lab_to_rgb
from skimage.color import rgb2lab
from test_methods import small_config

from ssl_ray.config import ConfigError, config_from_dict
from ssl_ray.nn.colour_bins import (
    ab_bins,
    annealed_mean,
    bin_histogram,
    lab_of,
    nearest_bin,
    rebalancing_weights,
    soft_encode,
)
from ssl_ray.nn.losses import RebalancedColourLoss
from ssl_ray.train.build import build_method
from ssl_ray.train.refit import refit_targets

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _bin_of(ab: tuple[float, float]) -> int:
    return int(((ab_bins() - torch.tensor(ab)).abs().sum(dim=1) == 0).nonzero().item())


def _image(colours: list[tuple[int, int, int]], side: int = 4) -> torch.Tensor:
    """One image (1, 3, side, len(colours) * side): a block of each colour."""
    blocks = [torch.tensor(c, dtype=torch.uint8).view(3, 1, 1).expand(3, side, side) for c in colours]
    return torch.cat(blocks, dim=2)[None]


def test_the_bins_are_the_grid_cells_srgb_colours_fall_in():
    bins = ab_bins()
    assert bins.shape == (261, 2) and (bins.remainder(10) == 0).all()
    assert bins.abs().max() <= 110 and len(torch.unique(bins, dim=0)) == len(bins)
    # Every colour of the 8-bit sRGB cube on a coarse lattice lands on a bin 5 or less away on
    # each axis (its cell), by kornia's conversion as by scikit-image's.
    lattice = np.stack(np.meshgrid(*[np.arange(0, 256, 15)] * 3, indexing="ij"), -1).reshape(-1, 3)
    reference = torch.from_numpy(rgb2lab(lattice[None] / 255.0)[0][:, 1:]).float()  # (M, 2)
    ours = lab_of(torch.from_numpy(lattice.T.copy()).view(1, 3, 1, -1).to(torch.uint8))[0, 1:, 0].T
    torch.testing.assert_close(ours, reference, atol=0.05, rtol=0)
    chosen = bins[nearest_bin(ours.T.reshape(1, 2, 1, -1))[0, 0]]
    assert (chosen - ours).abs().max() <= 5.0 + 1e-4
    # Pure red (a, b) = (80.1, 67.2) is bin (80, 70); any gray is (0, 0).
    assert bins[nearest_bin(lab_of(_image([RED], 1))[:, 1:])].flatten().tolist() == [80.0, 70.0]
    assert bins[nearest_bin(lab_of(_image([(90, 90, 90)], 1))[:, 1:])].flatten().tolist() == [0.0, 0.0]


def test_histogram_and_rebalancing_weights_of_an_image_whose_colours_are_known():
    image = _image([RED, RED, RED, BLUE])  # 48 red pixels, 16 blue
    counts = bin_histogram(lab_of(image)[:, 1:])[0]
    red, blue = _bin_of((80.0, 70.0)), _bin_of((80.0, -110.0))  # blue: (79.2, -107.9)
    assert counts[red] == 48 and counts[blue] == 16 and counts.sum() == 64
    # Eq. 4 with a smoothing too narrow to spread: w_q = 1 / ((1 - l) p_q + l / Q), E_p[w] = 1.
    q, mix = len(ab_bins()), 0.5
    weights = rebalancing_weights(counts, mix=mix, sigma=0.01).double()
    p = counts.double() / 64
    expected = 1.0 / ((1 - mix) * p + mix / q)
    expected /= (p * expected).sum()
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=0)
    assert weights[blue] > weights[red] and (p * weights).sum().item() == pytest.approx(1.0)
    assert weights.max() == weights[weights != weights[red]].max()  # every unseen bin alike
    # The paper's sigma 5: each bin's mass spread over its neighbours by exp(-d^2 / 50),
    # normalised per source bin, here by hand in numpy.
    centres = ab_bins().double().numpy()
    d2 = ((centres[:, None] - centres[None]) ** 2).sum(-1)
    kernel = np.exp(-d2 / 50.0)
    smoothed = (kernel / kernel.sum(0, keepdims=True)) @ p.numpy()
    by_hand = 1.0 / (0.5 * smoothed + 0.5 / q)
    by_hand /= (smoothed * by_hand).sum()
    np.testing.assert_allclose(rebalancing_weights(counts).double().numpy(), by_hand, rtol=1e-5)
    assert smoothed[red] < p[red].item() and smoothed.sum() == pytest.approx(1.0)


def test_soft_targets_spread_over_the_five_nearest_bins():
    centre = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)  # a bin's centre: 4 neighbours at 10
    target = soft_encode(centre)[0, :, 0, 0]
    assert target.sum().item() == pytest.approx(1.0) and torch.count_nonzero(target) == 5
    near = math.exp(-100 / 50)
    assert target[_bin_of((0.0, 0.0))].item() == pytest.approx(1 / (1 + 4 * near), rel=1e-5)
    for neighbour in ((10.0, 0.0), (-10.0, 0.0), (0.0, 10.0), (0.0, -10.0)):
        assert target[_bin_of(neighbour)].item() == pytest.approx(near / (1 + 4 * near), rel=1e-5)


def test_the_loss_is_the_rebalanced_cross_entropy_by_hand():
    torch.manual_seed(0)
    q = len(ab_bins())
    logits = torch.randn(2, q, 3, 3)
    ab = torch.rand(2, 2, 3, 3) * 120 - 60
    target = soft_encode(ab)
    weights = torch.rand(q) + 0.5
    loss = RebalancedColourLoss()(logits, target, weights)
    log_p, z, w = logits.double().log_softmax(1).numpy(), target.double().numpy(), weights.double().numpy()
    per_pixel = [
        w[z[n, :, i, j].argmax()] * -(z[n, :, i, j] * log_p[n, :, i, j]).sum()
        for n in range(2)
        for i in range(3)
        for j in range(3)
    ]
    assert loss.item() == pytest.approx(np.mean(per_pixel), rel=1e-5)


def test_the_annealed_mean_sits_between_the_mode_and_the_mean():
    q = len(ab_bins())
    logits = torch.full((1, q, 1, 1), -10.0)
    mode, other = _bin_of((40.0, 20.0)), _bin_of((-20.0, -40.0))
    logits[0, mode], logits[0, other] = 2.0, 1.0
    colour = lambda t: annealed_mean(logits, t)[0, :, 0, 0]  # noqa: E731
    torch.testing.assert_close(colour(0.01), torch.tensor([40.0, 20.0]), atol=1e-3, rtol=0)
    mean = torch.einsum("q,qc->c", logits[0, :, 0, 0].softmax(0), ab_bins())
    torch.testing.assert_close(colour(1.0), mean, atol=1e-3, rtol=0)
    a_at_t = colour(0.38)[0]
    assert mean[0] < a_at_t < 40.0


def _fitted_on_rank(rank: int) -> tuple[list[float], list[float]]:
    """Rank 0 counts a red image's colours, rank 1 holds another fit; both end with rank 0's."""
    torch.manual_seed(0)
    method = build_method(_config())
    image = _image([RED, BLUE] if rank == 0 else [BLUE, BLUE]).permute(0, 2, 3, 1)  # NHWC, as sources give
    batch = {"image": image, "label": torch.tensor([0]), "sample_index": torch.tensor([0])}
    refit_targets(method, None, lambda: [batch], 1, 0, torch.device("cpu"))
    return method.colour_histogram.tolist(), method.rebalancing.tolist()


def _config():
    return config_from_dict(
        {
            "method": {"name": "colorization"},
            "data": {"path": "/tmp", "channels": 3},
            "model": {"width": 8, "blocks": [1, 1, 1, 1]},
            "augment": {"global_crops": 1, "image_size": 16},
        }
    )


def test_two_gloo_workers_hold_rank_zeros_weights():
    results = run_on_two_workers(_fitted_on_rank)
    (counts0, weights0), (counts1, weights1) = results[0], results[1]
    assert counts0 == counts1 and weights0 == weights1
    assert counts0[_bin_of((80.0, 70.0))] == 16 and sum(counts0) == 32  # rank 0's red and blue


def test_the_encoder_reads_the_l_channel_only(tmp_path):
    method = build_method(small_config("colorization", tmp_path)).eval()
    # Two images of the same lightness and different colours: the encoder cannot tell them apart.
    red = _image([RED], side=8)
    same_l = lab_of(red)
    same_l[:, 1:] = torch.tensor([-40.0, 30.0]).view(1, 2, 1, 1)
    other = lab_to_rgb(same_l).clamp(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(method.backbone(red.float() / 255), method.backbone(other), atol=2e-3, rtol=0)
        brighter = method.backbone(_image([(255, 120, 120)], side=8))
        assert not torch.allclose(method.backbone(red), brighter, atol=1e-3)


def test_one_channel_data_are_refused_naming_the_data(tmp_path):
    with pytest.raises(
        ConfigError,
        match=rf"method\.name: colorization predicts the ab channels from the L channel of colour images; "
        rf"the data at {tmp_path} .*data\.channels=3 \(pipelines/colorization_openclipart\.yaml\)",
    ):
        config_from_dict(
            {"method": {"name": "colorization"}, "data": {"path": str(tmp_path)}, "augment": {"global_crops": 1}}
        )
