"""Scenes with per-pixel class masks for dense evaluation (``ssl-ray prepare --scenes``): the
mask agrees with the composited alpha (a later object covering an earlier one), Fashion-MNIST
items are their pixels above the threshold, the same seed makes the same scene, and the
OpenClipart scenes of Debian's real drawings keep every source on one side of the split."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from cli import joined_to_the_shared_head
from imagefiles import openclipart_folders
from PIL import Image
from test_openclipart import needs_package
from test_strict_inputs import one_line_error

from ssl_ray.data import scenes
from ssl_ray.data.prepare import PrepareOptions, prepare


def test_the_mask_is_the_composited_alpha_and_a_later_object_covers_an_earlier():
    canvas = np.full((20, 20, 3), 200, dtype=np.uint8)
    red = np.zeros((8, 8, 3), dtype=np.uint8)
    red[..., 0] = 255
    blue = np.zeros((8, 8, 3), dtype=np.uint8)
    blue[..., 2] = 255
    opaque = np.ones((8, 8), dtype=np.float32)
    ring = np.full((8, 8), 0.25, dtype=np.float32)  # faint everywhere but its centre
    ring[2:6, 2:6] = 1.0
    rng = np.random.default_rng(3)
    image, mask, corners = scenes.compose(canvas, [(red, opaque, 0), (blue, ring, 4)], rng)
    (t0, l0), (t1, l1) = corners
    expected = np.zeros((20, 20), dtype=np.uint8)

    def paint(top, left, coverage, value):
        for y in range(8):
            for x in range(8):
                if 0 <= top + y < 20 and 0 <= left + x < 20 and coverage[y, x] >= scenes.COVERED:
                    expected[top + y, left + x] = value

    paint(t0, l0, opaque, 1)
    paint(t1, l1, ring, 5)
    assert np.array_equal(mask, expected)
    # Where the second object is opaque the pixel is its colour; where faint, a mix over the first.
    shown = mask == 5
    assert shown.any() and (image[shown] == [0, 0, 255]).all()
    only_red = mask == 1
    assert (image[only_red][:, 0] >= 191).all()  # red, or red under a quarter of blue
    assert (image[mask == 0] != 0).any()


def test_fashion_mnist_items_are_their_bright_pixels_on_black():
    item = np.zeros((28, 28), dtype=np.uint8)
    item[5:20, 8:18] = 180
    item[4, 8:18] = 30  # a dim edge: below the threshold, not the item
    image, mask = scenes.fashion_mnist_scene([(item, 7)], 56, scenes.scene_rng(0, "train", 0))
    assert set(np.unique(mask)) == {0, 8}
    assert (mask == 8).sum() == 15 * 10 and (image[mask == 8] == 180).all()
    assert (image[mask == 0] == 0).all()
    again, _ = scenes.fashion_mnist_scene([(item, 7)], 56, scenes.scene_rng(0, "train", 0))
    other, _ = scenes.fashion_mnist_scene([(item, 7)], 56, scenes.scene_rng(0, "train", 1))
    assert np.array_equal(again, image) and not np.array_equal(other, image)


def test_a_cutout_keeps_the_drawings_alpha_and_a_texture_is_not_the_drawing():
    drawing = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    drawing.paste((10, 200, 30, 255), (10, 5, 30, 15))
    raw = io.BytesIO()
    drawing.save(raw, format="PNG")
    pixels, alpha = scenes.cutout(raw.getvalue(), 80)
    assert pixels.shape == (40, 80, 3) and alpha.shape == (40, 80)
    assert alpha[20, 40] == 1.0 and alpha[2, 2] == 0.0
    assert tuple(pixels[20, 40]) == (10, 200, 30)
    assert scenes.cutout(b"", 80) == "empty"
    white = scenes.on_white(pixels, alpha)
    assert tuple(white[2, 2]) == (255, 255, 255)
    texture = scenes.background("texture", 32, np.random.default_rng(0), white)
    assert texture.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="not one of"):
        scenes.background("stripes", 32, np.random.default_rng(0))


@pytest.fixture(scope="module")
def local_ray():
    with joined_to_the_shared_head():
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield


@needs_package
def test_openclipart_scenes_keep_each_drawing_on_one_side(tmp_path, local_ray):
    drawings = openclipart_folders(tmp_path / "png", {"plants": None, "geography": None, "special": 20})
    options = PrepareOptions(source="openclipart", scenes=40, scene_size=48, seed=3)
    manifests = prepare(str(drawings), str(tmp_path / "scenes"), options)
    sides = {}
    for side in ("train", "test"):
        manifest = json.loads((tmp_path / "scenes" / side / "manifest.json").read_text())
        assert manifest == manifests[side] and manifest["format"] == "ssl-ray scene shards 1"
        assert manifest["split"]["mask_classes"] == ["background", "geography", "plants"]
        (shard,) = sorted((tmp_path / "scenes" / side).glob("*.parquet"))
        sides[side] = pq.read_table(shard).to_pydict()
    assert len(sides["train"]["image"]) == 40 and len(sides["test"]["image"]) == 10  # its 20% share
    used = {side: {s for row in rows["sources"] for s in row} for side, rows in sides.items()}
    assert used["train"] and used["test"] and not used["train"] & used["test"]
    assert all("/special/" not in s for s in used["train"] | used["test"])
    for image, mask, label in zip(sides["train"]["image"], sides["train"]["mask"], sides["train"]["label"]):
        pixels = np.asarray(Image.open(io.BytesIO(image)))
        classes = np.asarray(Image.open(io.BytesIO(mask)))
        assert pixels.shape == (48, 48, 3) and classes.shape == (48, 48)
        assert set(np.unique(classes)) <= {0, 1, 2}
        if label >= 0:  # the class covering most of the scene
            assert np.bincount(classes.ravel(), minlength=3)[1:].argmax() == label
    assert sum(label >= 0 for label in sides["train"]["label"]) > 30  # objects do show
    again = prepare(str(drawings), str(tmp_path / "again"), options)["test"]
    (shard,) = sorted((tmp_path / "again" / "test").glob("*.parquet"))
    assert again["images"] == 10 and pq.read_table(shard)["mask"].to_pylist() == sides["test"]["mask"]


def test_scene_options_are_refused_where_they_mean_nothing(capsys, tmp_path):
    err = one_line_error(capsys, "prepare", str(tmp_path), str(tmp_path / "out"), "--scenes", "10")
    assert err == "ssl-ray: --scenes: of --source openclipart or fashion_mnist"
    err = one_line_error(
        capsys, "prepare", str(tmp_path), str(tmp_path / "o"), "--source", "openclipart", "--scene-size", "64"
    )
    assert err == "ssl-ray: --scene-size: with --scenes only"
    err = one_line_error(
        capsys, "prepare", str(tmp_path), str(tmp_path / "o"), "--source", "fashion_mnist", "--scenes", "0"
    )
    assert err == "ssl-ray: --scenes 0: at least 1"
