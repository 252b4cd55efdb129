"""Scenes with per-pixel class masks, for dense evaluation: a few objects of the labelled
categories scaled, placed (overlapping at times) and composited on a background, and the mask
of which class each pixel shows (0 the background, ``k + 1`` category ``k``).

OpenClipart's drawings carry an alpha channel, an object mask drawn by a person: a pixel is
the object's where its alpha is at least one half, and a later object covers an earlier one
where it is drawn over it. Backgrounds are a plain colour, smoothed noise, or a texture: a
small region of another drawing of the same side of the split, blown up and blurred (not an
object of its category, which would be in the picture and not in the mask). Fashion-MNIST's
items, bright on black, are placed on a larger black canvas and each is its pixels above a
threshold (the grayscale case).

Everything is drawn from one seeded generator per scene (``scene_rng``), so a scene is the
same whichever worker makes it, and the sources of a scene come from one side of the split
only, so no drawing is seen on both sides.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from ssl_ray.data.decode import CORRUPT, open_image

BACKGROUND = 0  # the mask's class of pixels no object covers
BACKGROUNDS = ("plain", "noise", "texture")
COVERED = 0.5  # an object's pixel is one its alpha covers at least this much
FASHION_THRESHOLD = 0.25  # a Fashion-MNIST item's pixel is one at least this bright


def scene_rng(seed: int, side: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0 if side == "train" else 1, index])


def cutout(raw: bytes | None, longest: int) -> tuple[np.ndarray, np.ndarray] | str:
    """A drawing as (RGB uint8 (h, w, 3), alpha float32 (h, w) in [0, 1]), its longer side
    ``longest`` px; or a skip reason. A drawing without transparency is opaque throughout."""
    image = open_image(raw, channels=3, size=longest)
    if isinstance(image, str):
        return image
    try:
        if image.mode in ("I", "I;16", "F"):
            image = image.point(lambda v: v / 256).convert("L")
        image = image.convert("RGBA")
        return _resized(image, longest)
    except (OSError, ValueError):
        return CORRUPT


def _resized(image: Image.Image, longest: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGBA image with its longer side ``longest`` px, as (RGB uint8, alpha float32 in [0, 1]).
    Premultiplied while resizing: a transparent pixel's colour (often black) must not bleed
    into the object's edge."""
    scale = longest / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    pixels = np.asarray(image.convert("RGBa").resize(size, Image.BICUBIC, reducing_gap=3.0).convert("RGBA"))
    return pixels[..., :3].copy(), pixels[..., 3].astype(np.float32) / 255.0


def on_white(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A cutout composited on white (RGB uint8), as the classification shards show drawings."""
    a = alpha[..., None]
    return np.rint(pixels * a + 255.0 * (1 - a)).astype(np.uint8)


def background(kind: str, size: int, rng: np.random.Generator, texture: np.ndarray | None = None) -> np.ndarray:
    """A ``size`` x ``size`` RGB uint8 background of ``kind`` (``BACKGROUNDS``); ``texture``: the
    drawing (RGB) a ``texture`` background takes a close-up of."""
    if kind == "plain":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (size, size, 3)).copy()
    if kind == "noise":
        coarse = rng.integers(0, 256, (max(2, size // 8), max(2, size // 8), 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(1))
        return np.asarray(smooth).copy()
    if kind == "texture":
        # A small region of the drawing, blown up and softened: its colours and strokes as a
        # surface, not a recognisable object of its category (which the mask calls background).
        if texture is None:
            raise ValueError("a texture background needs a drawing")
        h, w = texture.shape[:2]
        side = max(2, round(min(h, w) * float(rng.uniform(0.2, 0.35))))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        region = Image.fromarray(texture[top : top + side, left : left + side])
        return np.asarray(region.resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))).copy()
    raise ValueError(f"background {kind!r} is not one of {BACKGROUNDS}")


def compose(
    canvas: np.ndarray, objects: list[tuple[np.ndarray, np.ndarray, int]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """``objects`` (RGB or gray uint8, coverage in [0, 1], class) composited on ``canvas`` in
    order, each at a random place where at least half of it is inside: (image, uint8 mask of
    classes ``class + 1``, each object's top-left corner)."""
    image = canvas.astype(np.float32)
    size = canvas.shape[0]
    mask = np.full((size, size), BACKGROUND, dtype=np.uint8)
    corners = []
    for pixels, coverage, label in objects:
        h, w = coverage.shape
        top = int(rng.integers(-(h // 2), size - h // 2 + 1)) if h < 2 * size else 0
        left = int(rng.integers(-(w // 2), size - w // 2 + 1)) if w < 2 * size else 0
        corners.append((top, left))
        y0, x0, y1, x1 = max(0, top), max(0, left), min(size, top + h), min(size, left + w)
        if y0 >= y1 or x0 >= x1:
            continue
        a = coverage[y0 - top : y1 - top, x0 - left : x1 - left]
        patch = pixels[y0 - top : y1 - top, x0 - left : x1 - left].astype(np.float32)
        weight = a[..., None] if image.ndim == 3 else a  # one coverage for every colour channel
        image[y0:y1, x0:x1] = weight * patch + (1 - weight) * image[y0:y1, x0:x1]
        mask[y0:y1, x0:x1][a >= COVERED] = label + 1
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask, corners


def openclipart_scene(
    drawings: list[tuple[np.ndarray, np.ndarray, int]],
    size: int,
    rng: np.random.Generator,
    texture: np.ndarray | None,
    scale: tuple[float, float] = (0.35, 0.7),
) -> tuple[np.ndarray, np.ndarray]:
    """A scene of ``drawings`` (cutouts and their classes), each rescaled so its longer side
    is a ``scale`` share of the canvas, on a background drawn from ``BACKGROUNDS``."""
    kind = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS) if texture is not None else 2))]
    canvas = background(kind, size, rng, texture)
    placed = []
    for pixels, alpha, label in drawings:
        longest = max(2, round(size * float(rng.uniform(*scale))))
        rgba = Image.fromarray(np.dstack([pixels, np.rint(alpha * 255).astype(np.uint8)]), "RGBA")
        placed.append((*_resized(rgba, longest), label))
    image, mask, _ = compose(canvas, placed, rng)
    return image, mask


def fashion_mnist_scene(
    items: list[tuple[np.ndarray, int]], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST items (28 x 28 uint8, bright on black) and their classes on a black
    ``size`` canvas; an item covers its pixels at least ``FASHION_THRESHOLD`` bright."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    placed = [(item, (item >= FASHION_THRESHOLD * 255).astype(np.float32), label) for item, label in items]
    image, mask, _ = compose(canvas, placed, rng)
    return image, mask
