import numpy as np
import torch

from ssl_ray.config import AugmentConfig
from ssl_ray.views.transforms import ViewMaker


def images(n=16, size=28, seed=0):
    generator = np.random.default_rng(seed)
    # Structured images (a bright square on noise) so crops and flips change pixels.
    out = generator.integers(0, 60, size=(n, size, size), dtype=np.uint8)
    out[:, 4:14, 6:20] = 220
    return out


def test_two_views_shapes_dtype_range():
    batch = {"image": images(), "label": np.arange(16)}
    out = ViewMaker(AugmentConfig(image_size=24), channels=1)(batch)
    assert set(out) == {"view0", "view1", "label"}
    for key in ("view0", "view1"):
        assert out[key].shape == (16, 1, 24, 24)
        assert out[key].dtype == np.uint8
        assert out[key].min() >= 0 and out[key].max() <= 255
        assert out[key].max() > out[key].min()
    np.testing.assert_array_equal(out["label"], np.arange(16))


def test_views_differ_between_views_and_between_images():
    out = ViewMaker(AugmentConfig(), channels=1)({"image": images()})
    v0, v1 = out["view0"].astype(int), out["view1"].astype(int)
    differs = np.abs(v0 - v1).reshape(16, -1).mean(axis=1)
    assert (differs > 1.0).all(), "each image's two views should differ"


def test_views_reproducible_with_seed_and_fresh_without():
    batch = {"image": images()}
    config = AugmentConfig(blur_p=0.5)
    a = ViewMaker(config, channels=1, seed=7)(batch)
    b = ViewMaker(config, channels=1, seed=7)(batch)
    c = ViewMaker(config, channels=1, seed=8)(batch)
    np.testing.assert_array_equal(a["view0"], b["view0"])
    np.testing.assert_array_equal(a["view1"], b["view1"])
    assert not np.array_equal(a["view0"], c["view0"])
    unseeded = ViewMaker(config, channels=1)
    assert not np.array_equal(unseeded(batch)["view0"], unseeded(batch)["view0"])


def test_seeded_views_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ViewMaker(AugmentConfig(), channels=1, seed=1)({"image": images()})
    assert torch.equal(torch.rand(3), expected)


def test_strength_zero_keeps_intensities_of_uncropped_images():
    config = AugmentConfig(strength=0.0, crop_scale=(1.0, 1.0), flip_p=0.0)
    batch = {"image": images(size=28)}
    out = ViewMaker(config, channels=1)(batch)
    # With no jitter, no flip and a full-size crop (aspect ratio still random), the mean
    # intensity stays close to the input's.
    assert abs(out["view0"].mean() - batch["image"].mean()) < 10


def test_rgb_and_grayscale_to_three_channels():
    rgb = np.random.default_rng(0).integers(0, 255, size=(4, 32, 32, 3), dtype=np.uint8)
    out = ViewMaker(AugmentConfig(image_size=32), channels=3)({"image": rgb})
    assert out["view0"].shape == (4, 3, 32, 32)
    gray = images(4, 32)
    out = ViewMaker(AugmentConfig(image_size=32), channels=3)({"image": gray})
    assert out["view1"].shape == (4, 3, 32, 32)


def test_jitter_strength_spreads_intensities():
    batch = {"image": np.full((256, 28, 28), 128, dtype=np.uint8)}
    base = dict(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=1.0)
    weak = ViewMaker(AugmentConfig(strength=0.1, **base), channels=1, seed=0)(batch)["view0"]
    strong = ViewMaker(AugmentConfig(strength=1.0, **base), channels=1, seed=0)(batch)["view0"]
    assert strong.reshape(256, -1).mean(1).std() > 2 * weak.reshape(256, -1).mean(1).std()


def test_asymmetric_recipe_solarizes_only_the_second_view():
    """BYOL's per-view probabilities: here view 0 is never solarized and view 1 always is.
    Solarizing maps every pixel above half intensity to its inverse, so nothing stays bright."""
    config = AugmentConfig(strength=0.0, blur_p=[1.0, 0.0], solarize_p=[0.0, 1.0], crop_scale=(1.0, 1.0))
    out = ViewMaker(config, channels=1, seed=0)({"image": images()})
    assert out["view0"].max() > 200
    assert out["view1"].max() <= 128


MULTI_CROP = {"global_crops": 2, "local_crops": 4, "local_image_size": 12, "crop_scale": (0.5, 1.0)}


def test_multi_crop_gives_global_then_local_crops_of_their_sizes():
    config = AugmentConfig(image_size=24, **MULTI_CROP)
    out = ViewMaker(config, channels=1)({"image": images(), "label": np.arange(16)})
    assert [key for key in out if key.startswith("view")] == [f"view{i}" for i in range(6)]
    assert [out[f"view{i}"].shape for i in range(6)] == [(16, 1, 24, 24)] * 2 + [(16, 1, 12, 12)] * 4
    np.testing.assert_array_equal(out["label"], np.arange(16))


def test_each_crop_of_each_image_draws_its_own_region_at_its_own_scale():
    """One image copied 256 times, a horizontal ramp 0..255, no colour change or flip: a crop's
    pixel range is the share of the width it covers, sqrt(scale * aspect). Local crops
    (scale 0.05-0.4) cover 19-73% of it, global ones (0.5-1.0) 61-100%; every crop of every copy
    lands somewhere else (its own parameters)."""
    ramp = np.tile(np.linspace(0, 255, 56).astype(np.uint8), (256, 56, 1))
    config = AugmentConfig(image_size=24, strength=0.0, flip_p=0.0, **MULTI_CROP)
    out = ViewMaker(config, channels=1, seed=3)({"image": ramp})
    widths = {
        i: (out[f"view{i}"].max(axis=(1, 2, 3)).astype(int) - out[f"view{i}"].min(axis=(1, 2, 3))) / 255
        for i in range(6)
    }
    for i in range(2, 6):
        assert 0.14 < widths[i].min() and widths[i].max() < 0.78, (i, widths[i].min(), widths[i].max())
    for i in range(2):
        assert widths[i].min() > 0.55, (i, widths[i].min())
    assert (
        np.median(np.concatenate([widths[i] for i in range(2, 6)]))
        < np.median(np.concatenate([widths[0], widths[1]])) - 0.3
    )
    # Independent draws: each crop's (left edge, right edge) differs across the copies and
    # across the crops of one copy.
    low = np.stack([out[f"view{i}"].min(axis=(1, 2, 3)).astype(int) for i in range(6)])
    edges = low * 256 + np.stack([out[f"view{i}"].max(axis=(1, 2, 3)).astype(int) for i in range(6)])
    assert len(np.unique(edges[2])) > 100, len(np.unique(edges[2]))
    distinct_per_copy = np.array([len(set(edges[2:, copy])) for copy in range(256)])
    assert (distinct_per_copy == 4).mean() > 0.8, np.bincount(distinct_per_copy)


def test_local_crops_take_view_zeros_recipe_or_their_own_blur():
    config = AugmentConfig(blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2), **MULTI_CROP)
    assert [config.for_view("blur_p", i) for i in range(6)] == [1.0, 0.1, 1.0, 1.0, 1.0, 1.0]
    assert [config.for_view("solarize_p", i) for i in range(6)] == [0.0, 0.2, 0.0, 0.0, 0.0, 0.0]
    own = AugmentConfig(blur_p=(1.0, 0.1), local_blur_p=0.5, **MULTI_CROP)
    assert [own.for_view("blur_p", i) for i in range(6)] == [1.0, 0.1, 0.5, 0.5, 0.5, 0.5]
