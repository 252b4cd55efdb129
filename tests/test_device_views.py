"""The view recipe split in two (crop in Ray Data, colour on the training device) is the same
recipe: per-image random parameters, and the same distribution of outputs as running all of
it in Ray Data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_ray.config import AugmentConfig
from ssl_ray.views.transforms import DeviceViews, ViewMaker

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
# BYOL's asymmetric recipe at full strength: every step of the recipe is exercised.
RECIPE = AugmentConfig(
    image_size=32, strength=1.0, crop_scale=(0.3, 1.0), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2), jitter_p=0.8
)


def scenes(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    """Coloured scenes with structure to blur and crop: a colour gradient plus a bright disc
    at a random place, (N, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        a, b = rng.uniform(0, 1, (2, 3))
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        disc = ((y - cy) ** 2 + (x - cx) ** 2 < r**2)[..., None]
        out[i] = np.where(disc, rng.uniform(0.6, 1.0, 3), a * x[..., None] + b * (1 - y[..., None]))
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def image_statistics(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image summaries in [0, 255]: brightness, contrast, colourfulness, sharpness."""
    x = views.float()
    grey = x.mean(dim=1)
    return {
        "mean": x.mean(dim=(1, 2, 3)),
        "std": x.std(dim=(1, 2, 3)),
        "chroma": (x.amax(dim=1) - x.amin(dim=1)).mean(dim=(1, 2)),  # 0 for a grayscale image
        "sharpness": (grey[:, :, 1:] - grey[:, :, :-1]).abs().mean(dim=(1, 2)),
        "left_right": (x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3)) - x[..., x.shape[-1] // 2 :].mean(dim=(1, 2, 3))),
    }


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    points = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, points, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, points, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


def both_ways(images: np.ndarray, device: str, cpu_recipe: AugmentConfig, device_recipe: AugmentConfig):
    torch.manual_seed(0)
    in_ray_data = ViewMaker(cpu_recipe, channels=3)({"image": images})
    crops = ViewMaker(device_recipe, channels=3, stage="crop")({"image": images})
    assert crops["view0"].dtype == np.uint8 and crops["view0"].shape == (len(images), 3, 32, 32)
    split = DeviceViews(device_recipe, channels=3).to(device)
    on_device = split([torch.from_numpy(crops[f"view{i}"]).to(device) for i in range(2)])
    assert all(v.dtype == torch.float32 and 0.0 <= v.min() and v.max() <= 1.0 for v in on_device)
    return [torch.from_numpy(in_ray_data[f"view{i}"]) for i in range(2)], [(v * 255).cpu() for v in on_device]


@pytest.mark.parametrize("device", DEVICES)
def test_device_views_match_the_ray_data_recipe_in_distribution(device):
    # 3,000 views of 300 scenes: at this size a KS statistic above 0.06 would be a p < 0.001
    # difference between the two ways of making the same recipe.
    images = np.repeat(scenes(300), 10, axis=0)
    reference, split = both_ways(images, device, RECIPE, RECIPE)
    gaps = {}
    for view in range(2):
        a, b = image_statistics(reference[view]), image_statistics(split[view])
        gaps.update({f"view{view}.{name}": ks_statistic(a[name], b[name]) for name in a})
    assert max(gaps.values()) < 0.06, gaps
    # The comparison can tell recipes apart: half the jitter strength on the device side
    # moves the contrast and colour statistics far beyond the threshold.
    weaker = RECIPE.model_copy(update={"strength": 0.5})
    reference, split = both_ways(images, device, RECIPE, weaker)
    a, b = image_statistics(reference[0]), image_statistics(split[0])
    assert max(ks_statistic(a[name], b[name]) for name in ("std", "chroma")) > 0.15


@pytest.mark.parametrize("device", DEVICES)
def test_device_views_draw_parameters_per_image(device):
    """One scene repeated 512 times: each copy gets its own flip, jitter, grayscale, blur and
    solarize draw, so (almost) every output differs, and the two views differ."""
    torch.manual_seed(1)
    crop = torch.from_numpy(scenes(1)[:, 4:36, 4:36]).permute(0, 3, 1, 2).contiguous().to(device)
    batch = crop.expand(512, -1, -1, -1).contiguous()
    view0, view1 = DeviceViews(RECIPE, channels=3).to(device)([batch, batch])
    distinct = torch.unique(view0.flatten(1).mul(1e4).round(), dim=0)
    assert len(distinct) > 0.9 * 512  # the few repeats: images that drew no jitter and the same flip, blur
    brightness = view0.mean(dim=(1, 2, 3))
    assert brightness.std() > 0.02 and not torch.equal(view0, view1)
    flipped = (view0 - view0.flip(-1)).abs().mean(dim=(1, 2, 3))
    assert 0 < flipped.count_nonzero() <= 512
    grey = (view0.amax(dim=1) - view0.amin(dim=1)).amax(dim=(1, 2)) < 1e-6
    assert 0.1 < grey.float().mean() < 0.3  # RandomGrayscale(p=0.2), per image
