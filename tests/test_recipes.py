"""Batch recipes: the parts a method declares arrive in its batch, right, whichever stage
makes the colour; a recipe the views cannot make is refused before anything runs."""

import numpy as np
import pytest
import torch

from ssl_ray.config import ConfigError, config_from_dict
from ssl_ray.methods import METHODS
from ssl_ray.sections import AugmentConfig
from ssl_ray.views.parts import CropBoxes, RecipePart, RotatedCopies
from ssl_ray.views.recipe import Batch, BatchRecipe
from ssl_ray.views.transforms import DeviceViews

SIDE = 64


def coordinate_images(n: int = 8) -> np.ndarray:
    """Red is the pixel's column, green its row (0-252 in steps of 4): every pixel says where
    it came from."""
    ramp = (np.arange(SIDE) * 4).astype(np.uint8)
    images = np.zeros((n, SIDE, SIDE, 3), dtype=np.uint8)
    images[..., 0] = ramp[None, None, :]
    images[..., 1] = ramp[None, :, None]
    return images


def expected_ramp(start: torch.Tensor, end: torch.Tensor, size: int) -> torch.Tensor:
    """What a ramp channel reads across a view whose edges are at ``start`` and ``end``
    (fractions of the image): each view pixel's centre mapped into the image."""
    u = (torch.arange(size) + 0.5) / size
    position = start[:, None] + u[None, :] * (end - start)[:, None]  # (N, size), fraction of the side
    return (position * SIDE - 0.5) * 4


# Colour left alone (strength 0, no grayscale on these 3-channel views is drawn at p 0.2, so
# red and green could mix: check only views the grayscale left, where red != green).
PLAIN = AugmentConfig(image_size=16, strength=0.0, crop_scale=(0.1, 0.6), flip_p=0.5)


@pytest.mark.parametrize("stage", ["all", "crop"])
def test_crop_boxes_say_where_each_view_came_from_flips_included(stage):
    recipe = BatchRecipe(PLAIN, parts=(CropBoxes(),))
    views, parts = recipe.view_maker(channels=3, stage=stage, seed=0).make(coordinate_images(64))
    boxes = parts["crop_boxes"]
    assert boxes.shape == (64, 2, 4) and boxes.dtype == torch.float32
    flipped = boxes[..., 0] > boxes[..., 2]
    assert flipped.any() and (~flipped).any(), "p 0.5 over 128 views flips some and not others"
    for v, view in enumerate(views):
        kept = view[:, 0, 0, 0] != view[:, 1, 0, 0]  # not turned gray
        red = view[kept, 0].float().mean(dim=1)  # (n, S): the column ramp across the view
        green = view[kept, 1].float().mean(dim=2)  # (n, S): the row ramp down the view
        box = boxes[kept, v]
        # Within one source pixel (4 grey levels) and the rounding to uint8.
        torch.testing.assert_close(red, expected_ramp(box[:, 0], box[:, 2], 16), atol=5.0, rtol=0)
        torch.testing.assert_close(green, expected_ramp(box[:, 1], box[:, 3], 16), atol=5.0, rtol=0)


def test_rotated_copies_are_view_zero_turned_by_their_labels_in_both_stages():
    images = coordinate_images(16)[..., 0]  # one channel: an asymmetric ramp
    recipe = BatchRecipe(AugmentConfig(image_size=16, strength=0.0), parts=(RotatedCopies(copies=4),))
    for stage in ("all", "crop"):
        views, parts = recipe.view_maker(channels=1, stage=stage, seed=1).make(images)
        rotated, turns = parts["rotated"], parts["rotation"]
        assert rotated.shape == (16, 4, 1, 16, 16) and turns.shape == (16, 4)
        assert torch.equal(turns.sort(dim=1).values, torch.arange(4).expand(16, 4)), "each turn once"
        for n in range(16):
            for j in range(4):
                back = torch.rot90(rotated[n, j], -int(turns[n, j]), dims=(1, 2))
                assert torch.equal(back, views[0][n])


def test_device_colour_reaches_image_parts_and_leaves_boxes_alone():
    """With the colour on the training device, the views and a part's images get it there;
    boxes come through as Ray Data drew them."""
    augment = AugmentConfig(image_size=16, strength=1.0, jitter_p=1.0)
    recipe = BatchRecipe(augment, parts=(CropBoxes(), RotatedCopies(copies=2)))
    views, parts = recipe.view_maker(channels=3, stage="crop", seed=0).make(coordinate_images(8))
    columns = {f"view{i}": v for i, v in enumerate(views)} | parts | {"label": torch.arange(8)}
    assert sorted(columns) == sorted([*recipe.columns(), "label"])
    device = torch.device("cpu")
    batch = recipe.to_batch(columns, device, device_views=DeviceViews(augment, channels=3), labels=True)
    assert isinstance(batch, Batch) and batch.size == 8 and torch.equal(batch.labels, torch.arange(8))
    assert batch.views[0].dtype == torch.float32 and batch["rotated"].dtype == torch.float32
    assert batch["rotated"].shape == (8, 2, 3, 16, 16)
    assert not torch.allclose(batch["rotated"], parts["rotated"].float() / 255), "jittered on the device"
    torch.testing.assert_close(batch["crop_boxes"], parts["crop_boxes"])
    with pytest.raises(KeyError, match="the batch has no 'tiles'.*crop_boxes"):
        batch["tiles"]


class NeedsColour(RecipePart):
    columns = ("colour_split",)

    def refusal(self, augment, channels):
        return None if channels == 3 else "data.channels: needs colour images (3 channels)"


def test_a_recipe_the_data_cannot_make_is_refused_when_the_config_is_read(monkeypatch, tmp_path):
    monkeypatch.setattr(METHODS["simclr"], "recipe_parts", classmethod(lambda cls, params: (NeedsColour(),)))
    with pytest.raises(ConfigError, match=r"data\.channels: needs colour images"):
        config_from_dict({"method": {"name": "simclr"}, "data": {"path": str(tmp_path), "channels": 1}})
    config = config_from_dict({"method": {"name": "simclr"}, "data": {"path": str(tmp_path), "channels": 3}})
    assert [type(p) for p in config.batch_recipe.parts] == [NeedsColour]


def test_the_two_view_and_multi_crop_recipes_are_the_methods_declarations(tmp_path):
    with pytest.raises(ConfigError, match=r"augment.global_crops / augment.local_crops: simclr takes two views"):
        config_from_dict({"data": {"path": str(tmp_path)}, "augment": {"local_crops": 2}})
    dino = config_from_dict(
        {"method": {"name": "dino"}, "data": {"path": str(tmp_path)}, "augment": {"local_crops": 4}}
    )
    assert dino.batch_recipe.crops.kind == "multi" and dino.batch_recipe.columns() == [f"view{i}" for i in range(6)]
