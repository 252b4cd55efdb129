"""OpenClipart (Debian's ``openclipart-png``) as the project's labelled colour dataset: which
top-level categories are kept for labelled evaluation, the stratified and seeded train/test
split, and each drawing fitted whole onto a white square of a fixed size.

The package holds about 8,100 PNGs drawn by people, filed in 22 top folders of very different
sizes (3 to 2,158 drawings in version 1:0.18+dfsg-19), RGBA or LA, 100 to 1,100 px. A top
folder is a class. Two folders are not one kind of thing and are dropped whatever their
size: ``special`` (templates, gradients, patterns, examples of other drawings) and
``unsorted`` (drawings nobody has filed yet). A folder with fewer than ``MIN_DRAWINGS`` is
dropped too: its 20% test share would be a handful of drawings, a score too noisy to read and a
class a linear probe sees too rarely to learn. In 1:0.18+dfsg-19 that keeps 12 categories,
7,502 drawings (92% of them; 2 do not decode), 6,001 to train on and 1,501 held out at the
default 20%; each set's manifest records the split, what was kept and dropped, and why.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ssl_ray.data.decode import CORRUPT, normalise_mode, open_image

SYSTEM_ROOT = "/usr/share/openclipart/png"
CATCH_ALL = ("special", "unsorted")
MIN_DRAWINGS = 90  # at a 20% test share, at least 18 test drawings per category
DEFAULT_SIZE = 64
DEFAULT_TEST_SHARE = 0.2


def choose_categories(counts: dict[str, int], minimum: int = MIN_DRAWINGS) -> tuple[tuple[str, ...], dict[str, str]]:
    """``(kept categories, sorted; {dropped category: why})`` from each top folder's count."""
    kept, dropped = [], {}
    for name, count in sorted(counts.items()):
        if name in CATCH_ALL:
            dropped[name] = f"a catch-all folder of {count} drawings, not one kind of thing"
        elif count < minimum:
            dropped[name] = f"{count} drawings, fewer than {minimum}"
        else:
            kept.append(name)
    return tuple(kept), dropped


def stratified_split(labels: np.ndarray, test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, test indices)``: within each class a seeded permutation, its first
    ``round(test_share * n)`` (at least one, and one left to train on) to the test side. Each
    index is on one side only; both come back sorted."""
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test share {test_share} must lie strictly between 0 and 1")
    generator = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = generator.permutation(np.flatnonzero(labels == label))
        n_test = min(max(1, round(test_share * len(members))), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def fit_on_white(raw: bytes | None, size: int) -> bytes | str:
    """A drawing whole (not cropped: an object cut at the border is another object) on a
    white ``size`` x ``size`` RGB square, its transparency composited on white: the longer
    side scaled to ``size``, the shorter centred. PNG bytes, or a skip reason."""
    image = open_image(raw, channels=3, size=size)
    if isinstance(image, str):
        return image
    try:
        image = normalise_mode(image, channels=3)
        width, height = image.size
        scale = size / max(width, height)
        fitted = image.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC, reducing_gap=3.0
        )
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    except (OSError, ValueError):
        return CORRUPT
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
