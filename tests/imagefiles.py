"""Image folders for the tests: real Fashion-MNIST images as PNG/JPEG in class sub-folders,
plus one file of every bad kind the readers must skip or convert."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_ray.data import fashion_mnist

# Bad files and the reason each is skipped for.
BAD_FILES = {
    "empty.jpg": "empty",
    "notes.txt": "not_an_image",
    "error-page.png": "not_an_image",
    "truncated.jpg": "truncated",
    "cut-header.png": "truncated",
}


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def odd_mode_files(seed: int = 0) -> dict[str, bytes]:
    """Images in modes a reader must convert, not skip."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    palette = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    return {
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "palette.png": encode(palette, "PNG"),
        "deep16.png": encode(Image.fromarray((rng.integers(0, 65536, (40, 56))).astype(np.uint16)), "PNG"),
        "gray.webp": encode(rgb.convert("L"), "WEBP"),
        "bilevel.png": encode(rgb.convert("1"), "PNG"),
    }


def bad_files() -> dict[str, bytes]:
    jpeg = encode(Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90), "JPEG", quality=95)
    png = encode(Image.fromarray(np.zeros((64, 64), np.uint8) + 90), "PNG")
    return {
        "empty.jpg": b"",
        "notes.txt": b"not an image, just notes\n",
        "error-page.png": b"<html><body>502 Bad Gateway</body></html>",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "cut-header.png": png[:60],
    }


def fashion_mnist_folder(
    source_dir: Path, split: str, per_class: int, classes: int = 3, fmt: str = "PNG", offset: int = 0
) -> dict[str, bytes]:
    """``{"<class>/<n>.png": bytes}``: the first ``per_class`` images of each of the first
    ``classes`` classes, encoded."""
    data = fashion_mnist.load_split(source_dir, split)
    files = {}
    for label in range(classes):
        picks = np.flatnonzero(data.labels == label)[offset : offset + per_class]
        name = fashion_mnist.CLASSES[label].replace("/", "-").replace(" ", "-").lower()
        for i in picks:
            files[f"{name}/{i:05d}.{fmt.lower()}"] = encode(Image.fromarray(data.images[i]), fmt)
    return files


def write_local(root: Path, files: dict[str, bytes]) -> Path:
    for name, raw in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(raw)
    return root


def upload(client, bucket: str, prefix: str, files: dict[str, bytes]) -> str:
    for name, raw in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=raw)
    return f"s3://{bucket}/{prefix}"


OPENCLIPART = Path("/usr/share/openclipart/png")


def openclipart_folders(root: Path, limits: dict[str, int | None]) -> Path:
    """Debian's real drawings of the named top folders (the first ``limit`` of each, all for
    None) linked under ``root`` as the package files them."""
    for folder, limit in limits.items():
        for path in sorted((OPENCLIPART / folder).rglob("*.png"))[:limit]:
            link = root / folder / path.relative_to(OPENCLIPART / folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return root
