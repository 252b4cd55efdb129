"""Image files and Parquet shards, local or in object storage, as Ray Data datasets of
decoded uint8 images and labels (the same rows ``sources.from_arrays`` gives for in-memory data).

Both are read the same way: the driver lists the files once (the fail-fast check), and the
dataset starts as that list, cut into blocks that each become one read-and-decode task:

- image files: ``FILES_PER_TASK`` files per block, fetched with ``FETCH_THREADS`` requests in
  flight (an object store GET is mostly latency); when every file sits in a sub-folder of the
  root, the sub-folders, sorted, are the classes;
- Parquet shards: one shard per block, read in slices of ``DECODE_ROWS`` rows.

Why not ``read_binary_files`` / ``read_parquet``: their readers group small files into read
tasks by bytes, so a few hundred MB of data is a single task and every other CPU idles
(benchmarks/README.md, "Data pipeline"). A block per shard gives Ray Data one task per shard
however small the data, and the block order is drawn afresh each epoch.

What cannot be fetched or decoded is dropped and counted per reason in a ``SkipCounter``
actor, never raised.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from ssl_ray.config import DataConfig, StorageConfig
from ssl_ray.data.decode import UNREADABLE, decode_column
from ssl_ray.data.errors import DataSourceError
from ssl_ray.data.objectstore import StoredFile, describe_failure, filesystem_for, list_files
from ssl_ray.data.subsets import balanced_subset

FILES_PER_TASK = 64
FETCH_THREADS = 16
DECODE_ROWS = 512  # rows decoded (and given views) together: per-call overheads amortised, blocks modest

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
    kept_paths: tuple[str, ...] = ()  # with a label subset: the files it kept


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


def fetch(filesystem: pa.fs.FileSystem, paths: list[str]) -> list[bytes | None]:
    """Each file's bytes, ``None`` for one that is gone or unreadable, ``FETCH_THREADS`` at a time."""

    def one(path: str) -> bytes | None:
        try:
            with filesystem.open_input_stream(path) as stream:
                return stream.read()
        except OSError:
            return None

    if len(paths) == 1:
        return [one(paths[0])]
    with ThreadPoolExecutor(min(FETCH_THREADS, len(paths))) as pool:
        return list(pool.map(one, paths))


def fetch_and_decode(
    filesystem: pa.fs.FileSystem, paths: list[str], channels: int, size: int
) -> tuple[list[int], np.ndarray, list[bytes | None], dict[str, list[str]]]:
    """``(indices kept, their images, every file's bytes, skipped paths per reason)``."""
    encoded = fetch(filesystem, paths)
    readable = [i for i, raw in enumerate(encoded) if raw is not None]
    kept, images, skipped = decode_column([encoded[i] for i in readable], [paths[i] for i in readable], channels, size)
    if len(readable) < len(paths):
        skipped[UNREADABLE] = [path for path, raw in zip(paths, encoded) if raw is None]
    return [readable[i] for i in kept], images, encoded, skipped


def _fetch_and_decode(batch, filesystem, channels, size, counter):
    paths = [str(p) for p in batch["path"]]
    kept, images, _, skipped = fetch_and_decode(filesystem, paths, channels, size)
    count_skips(counter, len(kept), skipped)
    return {
        "image": images,
        "label": np.asarray(batch["label"], dtype=np.int64)[kept],
        "path": np.array([paths[i] for i in kept], dtype=object),
    }


def _decode_rows(records: pa.RecordBatch, shard, channels, size, image_column, label_column, counter):
    encoded = records.column(image_column).to_pylist()
    paths = (
        records.column("path").to_pylist()
        if "path" in records.schema.names
        else [f"{shard} row {i}" for i in range(len(encoded))]
    )
    kept, images, skipped = decode_column(encoded, paths, channels, size)
    if label_column:
        labels = records.column(label_column).to_numpy(zero_copy_only=False).astype(np.int64)[kept]
    else:
        labels = np.full(len(kept), -1, dtype=np.int64)
    count_skips(counter, len(kept), skipped)
    return {"image": images, "label": labels}


def _read_shards(batch, filesystem, columns, counter, **decode) -> Iterator[dict[str, np.ndarray]]:
    """Every shard in the block, ``DECODE_ROWS`` rows at a time, up to its ``take`` rows. A shard
    that cannot be read (or breaks off) counts its remaining rows as unreadable."""
    for shard, take in zip(batch["shard"], batch["take"]):
        done = 0
        try:
            with filesystem.open_input_file(shard) as handle:
                for records in pq.ParquetFile(handle).iter_batches(batch_size=DECODE_ROWS, columns=columns):
                    records = records.slice(0, take - done)
                    done += len(records)
                    yield _decode_rows(records, shard, counter=counter, **decode)
                    if done >= take:
                        break
        except (OSError, pa.ArrowException):
            count_skips(counter, 0, {UNREADABLE: [str(shard)] * (take - done)})


def path_blocks(rows: list[dict], per_block: int, shuffle: bool) -> ray.data.Dataset:
    """``rows`` (paths and what goes with them) as blocks of ``per_block``: one task each."""
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / per_block)))
    return dataset.randomize_block_order() if shuffle else dataset


def count_skips(counter, kept: int, skipped: dict[str, list[str]]) -> None:
    """Waits for the counter to take the counts (a millisecond per batch), so that once a batch
    has been consumed its skips are counted: no count is still in flight when it is read."""
    if counter is not None:
        ray.get(counter.add.remote(kept, {k: len(v) for k, v in skipped.items()}, skipped))


def image_files(
    url: str,
    storage: StorageConfig,
    channels: int,
    size: int,
    limit: int | None = None,
    counter=None,
    shuffle: bool = True,
    label_subset: tuple[float, int] | None = None,
) -> FileSource:
    """``label_subset`` (fraction, seed): a class-balanced share of the files, by folder label."""
    files = listing(url, storage)[:limit]
    filesystem, root = filesystem_for(url, storage.endpoint_url, storage.region)
    paths = [f.path for f in files]
    classes = folder_classes(root, paths)
    labels = folder_labels(paths, root, classes)
    if label_subset is not None:
        if not classes:
            raise DataSourceError(f"{url}: data.label_fraction needs labels (one sub-folder per class)")
        kept = balanced_subset(labels, *label_subset)
        paths, labels = [paths[i] for i in kept], labels[kept]
    labels = labels.tolist()
    rows = [{"path": path, "label": label} for path, label in zip(paths, labels)]
    decoded = path_blocks(rows, FILES_PER_TASK, shuffle).map_batches(
        _fetch_and_decode,
        fn_kwargs={"filesystem": filesystem, "channels": channels, "size": size, "counter": counter},
        batch_size=None,
        batch_format="numpy",
    )
    return FileSource(decoded, len(paths), classes, tuple(paths) if label_subset is not None else ())


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


def _shard_rows(files: list[StoredFile], filesystem) -> list[int]:
    """Rows per shard from the footers, read concurrently (one request each)."""

    def rows(path: str) -> int:
        return pq.read_metadata(path, filesystem=filesystem).num_rows

    with ThreadPoolExecutor(min(FETCH_THREADS, len(files))) as pool:
        return list(pool.map(rows, [f.path for f in files]))


def _label_classes(url, files, filesystem, storage, label_column) -> tuple[str, ...]:
    classes = tuple((read_manifest(url, storage) or {}).get("classes", ()))
    if classes:
        return classes
    # Shards written elsewhere: labels 0..max, named by number.
    top = max(
        pc.max(pq.read_table(f.path, columns=[label_column], filesystem=filesystem)[label_column]).as_py() or 0
        for f in files
    )
    return tuple(str(i) for i in range(top + 1))


def parquet_shards(
    url: str,
    config: DataConfig,
    storage: StorageConfig,
    size: int,
    counter=None,
    limit: int | None = None,
    shuffle: bool = True,
) -> FileSource:
    """The shards under ``url``; ``limit`` keeps the first rows in listing order (the same
    images every epoch, whatever order the shards are read in)."""
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
    shards, budget = [], limit if limit is not None else math.inf
    for stored, rows in zip(files, _shard_rows(files, filesystem)):
        take = int(min(rows, budget))
        if take > 0:
            shards.append({"shard": stored.path, "take": take})
        budget -= take
    decoded = path_blocks(shards, 1, shuffle).map_batches(
        _read_shards,
        fn_kwargs={
            "filesystem": filesystem,
            "columns": columns,
            "counter": counter,
            "channels": config.channels,
            "size": size,
            "image_column": config.image_column,
            "label_column": label_column,
        },
        batch_size=None,
        batch_format="numpy",
    )
    classes = _label_classes(url, files, filesystem, storage, label_column) if label_column else ()
    return FileSource(decoded, sum(shard["take"] for shard in shards), classes)
