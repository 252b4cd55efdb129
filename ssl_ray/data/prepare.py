"""``ssl-ray prepare``: a folder or bucket of images (or Fashion-MNIST) -> Parquet shards.

Pretraining from a few hundred shards beats pretraining from millions of loose files: one
request per shard instead of one per image, and no per-object latency in the read path
(benchmarks/README.md measures it). Each row keeps the image's original encoded bytes (so no
quality is lost and decoding stays the training pipeline's job) with its label and source
path. Every image is decoded once here; what cannot be decoded is left out and listed with
its reason in ``manifest.json`` beside the shards.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data
from PIL import Image

from ssl_ray.console import start_ray
from ssl_ray.data import fashion_mnist
from ssl_ray.data.errors import DataSourceError
from ssl_ray.data.files import (
    FILES_PER_TASK,
    MANIFEST,
    count_skips,
    fetch_and_decode,
    folder_classes,
    folder_labels,
    listing,
    path_blocks,
)
from ssl_ray.data.objectstore import describe_failure, filesystem_for
from ssl_ray.data.skips import SkipCounter
from ssl_ray.sections import StorageConfig

# Decoding at a small size still reads the whole stream (truncation shows) at a fraction of
# the cost of a full-size decode.
_CHECK_SIZE = 16


@dataclass(frozen=True)
class PrepareOptions:
    source: str = "images"  # or "fashion_mnist"
    split: str = "train"  # fashion_mnist only
    shard_mb: float = 64.0
    seed: int = 0  # the order images are written in
    storage: StorageConfig = StorageConfig()


def _fetch_and_check(batch, filesystem, counter):
    paths = [str(p) for p in batch["path"]]
    keep, _, encoded, skipped = fetch_and_decode(filesystem, paths, 3, _CHECK_SIZE)
    count_skips(counter, len(keep), skipped)
    return pa.table(
        {
            "image": pa.array([encoded[i] for i in keep], type=pa.binary()),
            "label": pa.array(np.asarray(batch["label"], dtype=np.int64)[keep], type=pa.int64()),
            "path": pa.array([paths[i] for i in keep], type=pa.string()),
        }
    )


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def _images(src: str, options: PrepareOptions, counter) -> tuple[ray.data.Dataset, tuple[str, ...], float]:
    """The listed files in a seeded random order, so that every shard holds a random draw of
    the images (a folder-per-class listing in order would give one class per shard) without
    moving any image bytes through a shuffle."""
    files = listing(src, options.storage)
    filesystem, root = filesystem_for(src, options.storage.endpoint_url, options.storage.region)
    paths = [f.path for f in files]
    classes = folder_classes(root, paths)
    labels = folder_labels(paths, root, classes)
    order = np.random.default_rng(options.seed).permutation(len(paths))
    rows = [{"path": paths[i], "label": int(labels[i])} for i in order]
    checked = path_blocks(rows, FILES_PER_TASK).map_batches(
        _fetch_and_check,
        fn_kwargs={"filesystem": filesystem, "counter": counter},
        batch_size=None,
        batch_format="numpy",
    )
    return checked, classes, sum(f.size for f in files) / len(files)


def _fashion_mnist(src: str, options: PrepareOptions, counter) -> tuple[ray.data.Dataset, tuple[str, ...], float]:
    split = fashion_mnist.load_split(src, options.split)
    encoded = [_encode_png(image) for image in split.images]
    count_skips(counter, len(encoded), {})
    paths = [f"fashion-mnist/{options.split}/{i:05d}.png" for i in range(len(encoded))]
    table = pa.table(
        {
            "image": pa.array(encoded, type=pa.binary()),
            "label": pa.array(split.labels.astype(np.int64)),
            "path": pa.array(paths, type=pa.string()),
        }
    )
    return ray.data.from_arrow(table), fashion_mnist.CLASSES, sum(map(len, encoded)) / len(encoded)


def prepare(src: str, dst: str, options: PrepareOptions) -> dict:
    """Write the shards and the manifest; returns the manifest."""
    started = time.time()
    if not ray.is_initialized():
        start_ray()
    filesystem, out = filesystem_for(dst, options.storage.endpoint_url, options.storage.region)
    try:
        existing = filesystem.get_file_info(pafs.FileSelector(out, allow_not_found=True))
    except OSError as error:
        raise DataSourceError(describe_failure(dst, error)) from None
    if any(info.base_name.endswith(".parquet") for info in existing):
        raise DataSourceError(f"{dst}: already holds Parquet shards; choose an empty destination")

    counter = SkipCounter.remote()
    read = _fashion_mnist if options.source == "fashion_mnist" else _images
    rows, classes, mean_bytes = read(src, options, counter)
    rows_per_shard = max(1, int(options.shard_mb * 2**20 / max(mean_bytes, 1.0)))
    try:
        rows.write_parquet(
            out, filesystem=filesystem, min_rows_per_file=rows_per_shard, max_rows_per_file=rows_per_shard
        )
    except OSError as error:
        raise DataSourceError(describe_failure(dst, error)) from None

    shards = [
        info
        for info in filesystem.get_file_info(pafs.FileSelector(out, recursive=True))
        if info.base_name.endswith(".parquet")
    ]
    summary = ray.get(counter.summary.remote())
    manifest = {
        "format": "ssl-ray image shards 1",
        "source": src,
        "seed": options.seed,
        "images": summary["kept"],
        "classes": list(classes),
        "image_column": "image",
        "label_column": "label",
        "shards": len(shards),
        "bytes": sum(info.size for info in shards),
        "skipped": summary["skipped"],
        "skipped_examples": summary["examples"],
        "seconds": round(time.time() - started, 1),
    }
    with filesystem.open_output_stream(f"{out}/{MANIFEST}") as stream:
        stream.write(json.dumps(manifest, indent=2).encode())
    return manifest
