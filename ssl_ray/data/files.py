"""Image files and Parquet shards, local or in object storage, as Ray Data datasets of
decoded uint8 images and labels (the same rows ``sources.from_arrays`` gives for in-memory data).

- Image files: listed once on the driver (the fail-fast check), read with
  ``read_binary_files``; when every file sits in a sub-folder of the root, the sub-folders,
  sorted, are the classes.
- Parquet shards: ``read_parquet`` of the image-bytes column (and the label column if there).

Files are decoded inside Ray Data tasks; what cannot be decoded is dropped and counted per
reason in a ``SkipCounter`` actor, never raised.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from ssl_ray.config import DataConfig, StorageConfig
from ssl_ray.data.decode import decode_column
from ssl_ray.data.errors import DataSourceError
from ssl_ray.data.objectstore import StoredFile, describe_failure, filesystem_for, list_files

MANIFEST = "manifest.json"


@functools.lru_cache(maxsize=8)
def listing(url: str, storage: StorageConfig) -> tuple[StoredFile, ...]:
    """One listing per location per process: training and the kNN bank read the same files."""
    return tuple(list_files(url, storage.endpoint_url, storage.region))


@dataclass
class FileSource:
    dataset: ray.data.Dataset  # image (uint8), label (int64, -1 when unknown)
    size: int  # rows before decoding (skipped files are counted as they are met)
    classes: tuple[str, ...]  # empty when the data has no labels


def folder_classes(root: str, paths: list[str]) -> tuple[str, ...]:
    """Sub-folder names when every file sits in one below ``root`` (and there are two or more)."""
    prefix = root.rstrip("/") + "/"
    tops = set()
    for path in paths:
        relative = path[len(prefix) :] if path.startswith(prefix) else path
        if "/" not in relative:
            return ()
        tops.add(relative.split("/", 1)[0])
    return tuple(sorted(tops)) if len(tops) > 1 else ()


def folder_labels(paths: list[str], root: str, classes: tuple[str, ...]) -> np.ndarray:
    """Each path's class index from its first folder below ``root``; -1 without classes."""
    if not classes:
        return np.full(len(paths), -1, dtype=np.int64)
    prefix = root.rstrip("/") + "/"
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[path[len(prefix) :].split("/", 1)[0]] for path in paths], dtype=np.int64)


def _decode_files(batch, channels, size, root, classes, counter):
    paths = [str(p) for p in batch["path"]]
    kept, images, skipped = decode_column(list(batch["bytes"]), paths, channels, size)
    kept_paths = [paths[i] for i in kept]
    count_skips(counter, len(kept), skipped)
    return {
        "image": images,
        "label": folder_labels(kept_paths, root, classes),
        "path": np.array(kept_paths, dtype=object),
    }


def _decode_rows(batch, channels, size, image_column, label_column, counter):
    encoded = list(batch[image_column])
    paths = [str(p) for p in batch["path"]] if "path" in batch else [f"row {i}" for i in range(len(encoded))]
    kept, images, skipped = decode_column(encoded, paths, channels, size)
    if label_column and label_column in batch:
        labels = np.asarray(batch[label_column], dtype=np.int64)[kept]
    else:
        labels = np.full(len(kept), -1, dtype=np.int64)
    count_skips(counter, len(kept), skipped)
    return {"image": images, "label": labels}


def count_skips(counter, kept: int, skipped: dict[str, list[str]]) -> None:
    """Waits for the counter to take the counts (a millisecond per batch), so that once a batch
    has been consumed its skips are counted: no count is still in flight when it is read."""
    if counter is not None:
        ray.get(counter.add.remote(kept, {k: len(v) for k, v in skipped.items()}, skipped))


def image_files(
    url: str, storage: StorageConfig, channels: int, size: int, limit: int | None = None, counter=None
) -> FileSource:
    files = listing(url, storage)[:limit]
    filesystem, root = filesystem_for(url, storage.endpoint_url, storage.region)
    paths = [f.path for f in files]
    classes = folder_classes(root, paths)
    dataset = ray.data.read_binary_files(paths, filesystem=filesystem, include_paths=True, shuffle="files")
    decoded = dataset.map_batches(
        _decode_files,
        fn_kwargs={"channels": channels, "size": size, "root": root, "classes": classes, "counter": counter},
        batch_size=256,
        batch_format="numpy",
    )
    return FileSource(decoded, len(paths), classes)


def read_manifest(url: str, storage: StorageConfig) -> dict | None:
    filesystem, root = filesystem_for(url, storage.endpoint_url, storage.region, fail_fast=True)
    try:
        with filesystem.open_input_stream(f"{root}/{MANIFEST}") as stream:
            return json.loads(stream.read())
    except FileNotFoundError:
        return None
    except OSError as error:
        if "not found" in str(error).lower() or "nosuchkey" in str(error).lower():
            return None
        raise DataSourceError(describe_failure(url, error)) from None


def parquet_shards(url: str, config: DataConfig, storage: StorageConfig, size: int, counter=None) -> FileSource:
    files = [f for f in listing(url, storage) if f.path.endswith(".parquet")]
    if not files:
        raise DataSourceError(f"{url}: no .parquet files under this prefix")
    filesystem, _ = filesystem_for(url, storage.endpoint_url, storage.region)
    schema = pq.read_schema(files[0].path, filesystem=filesystem)
    if config.image_column not in schema.names:
        raise DataSourceError(f"{url}: no column {config.image_column!r} (columns: {', '.join(schema.names)})")
    label_column = config.label_column if config.label_column in schema.names else None
    columns = (
        [config.image_column] + ([label_column] if label_column else []) + (["path"] if "path" in schema.names else [])
    )
    rows = sum(pq.read_metadata(f.path, filesystem=filesystem).num_rows for f in files)
    dataset = ray.data.read_parquet([f.path for f in files], filesystem=filesystem, columns=columns, shuffle="files")
    if config.train_subset:
        dataset, rows = dataset.limit(config.train_subset), min(rows, config.train_subset)
    decoded = dataset.map_batches(
        _decode_rows,
        fn_kwargs={
            "channels": config.channels,
            "size": size,
            "image_column": config.image_column,
            "label_column": label_column,
            "counter": counter,
        },
        batch_size=256,
        batch_format="numpy",
    )
    classes: tuple[str, ...] = ()
    if label_column:
        classes = tuple((read_manifest(url, storage) or {}).get("classes", ()))
        if not classes:  # shards written elsewhere: labels 0..max, named by number
            top = max(
                pc.max(pq.read_table(f.path, columns=[label_column], filesystem=filesystem)[label_column]).as_py() or 0
                for f in files
            )
            classes = tuple(str(i) for i in range(top + 1))
    return FileSource(decoded, rows, classes)
