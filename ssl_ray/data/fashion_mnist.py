"""Fashion-MNIST (Xiao et al. 2017) from its four IDX files, in a directory or behind a URL.

The files may be plain or gzipped (``train-images-idx3-ubyte[.gz]`` ...), which covers Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), the dataset's own
download, and a mirror the user names.
"""

from __future__ import annotations

import gzip
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssl_ray.data.errors import DataSourceError

IMAGE_SIZE = 28  # the images' side in pixels
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPE = {0x08: np.uint8}


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Decode an IDX file: magic (0, 0, dtype, ndim), ndim big-endian uint32 sizes, then data."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPE:
        raise DataSourceError(f"{name}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataSourceError(f"{name}: header says {shape}, found {data.size} values (truncated file?)")
    return data.reshape(shape)


def _read(location: str, stem: str) -> bytes:
    if location.startswith(("http://", "https://")):
        base = location.rstrip("/")
        errors = []
        for candidate in (f"{base}/{stem}.gz", f"{base}/{stem}"):
            try:
                with urllib.request.urlopen(candidate, timeout=30) as response:
                    return response.read()
            except OSError as error:
                errors.append(f"{candidate}: {error}")
        raise DataSourceError("cannot download Fashion-MNIST: " + "; ".join(errors))
    folder = Path(location).expanduser()
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate.read_bytes()
    raise DataSourceError(f"{folder}: no {stem}[.gz]; expected the four Fashion-MNIST IDX files there")


def load_split(location: str | Path, split: str) -> Split:
    """Read one split (``train``: 60,000 images; ``test``: 10,000) into memory."""
    location = str(location)
    images_stem, labels_stem = _FILES[split]
    images = parse_idx(_read(location, images_stem), images_stem)
    labels = parse_idx(_read(location, labels_stem), labels_stem).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataSourceError(f"{location}: {split} images {images.shape} and labels {labels.shape} do not match")
    return Split(images=images, labels=labels)
