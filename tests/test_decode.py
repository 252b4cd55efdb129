import numpy as np
import pytest
from imagefiles import BAD_FILES, bad_files, encode, odd_mode_files
from PIL import Image

from ssl_ray.data.decode import SKIP_REASONS, decode_column, decode_image


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(odd_mode_files()))
def test_odd_modes_are_converted_not_skipped(name, channels):
    out = decode_image(odd_mode_files()[name], channels, 24)
    assert isinstance(out, np.ndarray), out
    assert out.dtype == np.uint8 and out.shape == ((24, 24) if channels == 1 else (24, 24, 3))
    assert out.max() > out.min()  # content survived the conversion


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    out = decode_image(encode(Image.fromarray(ramp), "PNG"), 1, 64)
    # Clipping (PIL's plain convert) would give 255 almost everywhere; scaling keeps the ramp.
    assert out[:, 0].max() < 10 and out[:, -1].min() > 245
    assert 100 < out[:, 32].mean() < 160


def test_alpha_is_composited_on_white():
    transparent = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    out = decode_image(encode(transparent, "PNG"), 3, 8)
    assert (out == 255).all()


def test_centre_square_keeps_the_middle():
    image = np.zeros((20, 60), np.uint8)
    image[:, 20:40] = 255  # the middle third is white
    out = decode_image(encode(Image.fromarray(image), "PNG"), 1, 20)
    assert out.shape == (20, 20) and out[:, 2:18].min() > 200


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_give_their_reason(name):
    assert decode_image(bad_files()[name], 3, 16) == BAD_FILES[name]
    assert BAD_FILES[name] in SKIP_REASONS


def test_decode_column_keeps_good_rows_in_order_and_groups_skips():
    good = odd_mode_files()
    bad = bad_files()
    names = ["rgba.png", "empty.jpg", "cmyk.jpg", "notes.txt", "truncated.jpg", "gray.webp"]
    column = [good.get(n) or bad.get(n) for n in names]
    kept, images, skipped = decode_column(column, names, channels=3, size=16)
    assert kept == [0, 2, 5] and images.shape == (3, 16, 16, 3)
    assert skipped == {"empty": ["empty.jpg"], "not_an_image": ["notes.txt"], "truncated": ["truncated.jpg"]}
    nothing, empty, _ = decode_column([b""], ["x"], channels=1, size=16)
    assert nothing == [] and empty.shape == (0, 16, 16)
