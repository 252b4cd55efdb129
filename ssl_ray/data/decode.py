"""Encoded image bytes -> fixed-size uint8 arrays, never raising on one bad file.

A multi-hour run must not die on one corrupt object, so ``decode_image`` returns either the
image or the reason it was skipped, and the caller counts the reasons. Odd modes are converted
rather than skipped: CMYK and palette images to RGB, alpha composited onto white, 16-bit and
float images scaled (not clipped) to 8 bits, grayscale repeated to RGB or RGB reduced to
grayscale, whichever the pipeline's ``channels`` asks for.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# Why a file was skipped; these names reach MLflow as ``skipped_<reason>``.
EMPTY = "empty"  # zero bytes
NOT_AN_IMAGE = "not_an_image"  # no image format recognised (text, HTML error page, ...)
TRUNCATED = "truncated"  # a valid header but the data stops early
CORRUPT = "corrupt"  # recognised but undecodable for any other reason
UNREADABLE = "unreadable"  # listed, but gone or unreadable when fetched (or a damaged shard)
SKIP_REASONS = (EMPTY, NOT_AN_IMAGE, TRUNCATED, CORRUPT, UNREADABLE)

# Decompression-bomb guard: PIL warns at ~89 Mpx and raises at twice that; we skip such
# files as corrupt rather than let one allocate gigabytes in a worker.
Image.MAX_IMAGE_PIXELS = 1 << 28


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit integer and float images: rescale the value range into 0-255."""
    values = np.asarray(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        high = 65535.0 if values.max(initial=0) > 255 else 255.0
    else:  # "F"
        high = float(values.max(initial=1.0)) or 1.0
    scaled = np.clip(values.astype(np.float32) * (255.0 / high), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def normalise_mode(image: Image.Image, channels: int) -> Image.Image:
    """8-bit grayscale (``channels`` 1) or RGB; transparency composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")  # keeps palette transparency for the composite below
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def _centre_square(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, then the centre square: every image the same shape."""
    width, height = image.size
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    if resized != image.size:
        image = image.resize(resized, Image.BILINEAR, reducing_gap=3.0)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def open_image(raw: bytes | None, channels: int, size: int) -> Image.Image | str:
    """The decoded image (drafted towards ``size`` where the format allows), or a reason from
    SKIP_REASONS."""
    if not raw:
        return EMPTY
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            # JPEG: let libjpeg decode straight at a reduced scale (1/2 .. 1/8) when the image
            # is much larger than needed; the cheapest way to cut decode cost.
            image.draft("L" if channels == 1 else "RGB", (size, size))
            image.load()
    except UnidentifiedImageError:
        return NOT_AN_IMAGE
    except OSError as error:
        message = str(error).lower()
        return TRUNCATED if "truncated" in message or "broken data stream" in message else CORRUPT
    except (ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning, EOFError):
        return CORRUPT
    return image


def decode_image(raw: bytes | None, channels: int, size: int) -> np.ndarray | str:
    """``(size, size)`` (grayscale) or ``(size, size, 3)`` uint8, or a reason from SKIP_REASONS."""
    image = open_image(raw, channels, size)
    if isinstance(image, str):
        return image
    try:
        return np.asarray(_centre_square(normalise_mode(image, channels), size), dtype=np.uint8)
    except (OSError, ValueError):
        return CORRUPT


def decode_column(
    encoded: list[bytes | None], paths: list[str], channels: int, size: int
) -> tuple[list[int], np.ndarray, dict[str, list[str]]]:
    """Decode a column of encoded images: ``(indices kept, images (K, S, S[, 3]), skipped
    paths per reason)``."""
    kept, images, skipped = [], [], {}
    for index, (raw, path) in enumerate(zip(encoded, paths)):
        result = decode_image(raw, channels, size)
        if isinstance(result, str):
            skipped.setdefault(result, []).append(path)
        else:
            kept.append(index)
            images.append(result)
    shape = (0, size, size) if channels == 1 else (0, size, size, 3)
    return kept, (np.stack(images) if images else np.zeros(shape, np.uint8)), skipped


# The listing's check reads this much of each file: the whole of a small file, the header of a
# large one (a JPEG's EXIF block is at most 64 KiB, so its frame header is inside).
PROBE_BYTES = 1 << 16
_PROBE_SIZE = 8  # decoding at a small size still reads the whole stream (truncation shows)


def probe_image(head: bytes | None, complete: bool) -> str | None:
    """Why an image file will be skipped, or None if it looks decodable, from its first bytes:
    with the whole file (``complete``), by decoding it at a tiny size, which is exact; with a
    prefix, by reading the header (an empty file, text, an HTML error page, an unknown or
    broken header). A prefix that does not open is not yet a verdict: None, and the reader's
    full decode has the last word."""
    if head is None:
        return UNREADABLE
    if complete:
        result = decode_image(head, 1, _PROBE_SIZE)
        return result if isinstance(result, str) else None
    if not head:
        return EMPTY
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.open(io.BytesIO(head))
    except UnidentifiedImageError:
        # PIL says this also of a real image whose header runs past the prefix: only a file
        # no format claims by its signature is not an image.
        return None if _claimed_by_a_format(head) else NOT_AN_IMAGE
    except Exception:  # a header longer than the prefix: decided by the full decode
        return None
    return None


def _claimed_by_a_format(head: bytes) -> bool:
    Image.init()
    for _, accept in Image.OPEN.values():
        try:
            if accept is not None and accept(head[:32]):
                return True
        except Exception:
            continue
    return False
