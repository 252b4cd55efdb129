import pytest
import torch
import torchvision.transforms.v2.functional as TF

from ssl_ray.views.colour import LUMA, RandomColourJitter


def jitter_with(monkeypatch, only: str, value: float) -> RandomColourJitter:
    """A jitter that applies one operation with a fixed factor (the others' ranges are 0)."""
    ranges = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, only: 0.4}
    jitter = RandomColourJitter(**ranges, p=1.0)
    monkeypatch.setattr(jitter, "_draw", lambda name, n, device: torch.full((n,), value))
    return jitter


def images(channels=3, n=4, seed=0):
    # Mid-range values, so no operation below needs clamping and torchvision compares exactly.
    return 0.3 + 0.3 * torch.rand(n, channels, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name, reference",
    [("brightness", TF.adjust_brightness), ("contrast", TF.adjust_contrast), ("saturation", TF.adjust_saturation)],
)
@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_single_operations_match_torchvision(monkeypatch, name, reference, factor):
    x = images()
    expected = torch.stack([reference(image, factor) for image in x])
    torch.testing.assert_close(jitter_with(monkeypatch, name, factor)(x), expected, atol=2e-3, rtol=0)


def test_grayscale_gets_brightness_and_contrast(monkeypatch):
    x = images(channels=1)
    expected = torch.stack([TF.adjust_contrast(image, 1.3) for image in x])
    torch.testing.assert_close(jitter_with(monkeypatch, "contrast", 1.3)(x), expected, atol=2e-3, rtol=0)


def test_hue_rotation_keeps_luma_and_moves_red_towards_green(monkeypatch):
    x = images()
    shifted = jitter_with(monkeypatch, "hue", 0.1)(x)
    luma = torch.tensor(LUMA).view(1, 3, 1, 1)
    torch.testing.assert_close((shifted * luma).sum(1), (x * luma).sum(1), atol=1e-4, rtol=0)
    red = torch.tensor([0.7, 0.35, 0.35]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    ours = jitter_with(monkeypatch, "hue", 1 / 6)(red)[0, :, 0, 0]
    hsv = TF.adjust_hue(red[0], 1 / 6)[:, 0, 0]  # torchvision's HSV hue shift by the same amount
    assert ours[1] > ours[2] and hsv[1] > hsv[2]  # both turn red towards yellow
    assert ours[1] > red[0, 1, 0, 0] and ours[0] < red[0, 0, 0, 0]
    # A rotation of the chroma plane: its magnitude (the I, Q norm) is kept exactly.
    to_yiq = torch.tensor([[0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    torch.testing.assert_close((to_yiq @ ours).norm(), (to_yiq @ red[0, :, 0, 0]).norm(), atol=1e-4, rtol=0)


def test_zero_ranges_and_probability_zero_are_identity():
    x = images()
    torch.testing.assert_close(RandomColourJitter(0.0, 0.0, 0.0, 0.0)(x), x)
    torch.testing.assert_close(RandomColourJitter(0.8, 0.8, 0.8, 0.2, p=0.0)(x), x)


def test_each_image_draws_its_own_factors_and_output_stays_in_range():
    torch.manual_seed(0)
    x = images(n=64).clone()
    x[:, :, :4] = 1.0  # bright regions that brightness > 1 must clamp
    out = RandomColourJitter(0.8, 0.8, 0.8, 0.2, p=1.0)(x)
    assert out.min() >= 0.0 and out.max() <= 1.0
    ratios = out[:, :, 8:, :].mean(dim=(1, 2, 3)) / x[:, :, 8:, :].mean(dim=(1, 2, 3))
    assert ratios.std() > 0.05  # per-image factors, not one for the whole batch
    half = RandomColourJitter(0.8, 0.0, 0.0, 0.0, p=0.5)(x)
    unchanged = (half == x).flatten(1).all(dim=1).float().mean()
    assert 0.2 < unchanged < 0.8
