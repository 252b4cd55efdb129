"""Image files and Parquet shards, local or in object storage, as Ray Data datasets of
decoded uint8 images and labels (the same rows ``sources.from_arrays`` gives for in-memory data).

Both are read the same way. The driver lists the files once (the fail-fast check) and indexes
them into *units*, what one read can take on its own: an image file, or a row group of a
shard. Every unit's label is known there (a file's class folder; a shard's label column, read
alone), so subsets are drawn by class (``subsets.stratified_sample``), never as the first N of
a listing. The units are then read in a fresh seeded permutation each pass (``order.py``),
``FILES_PER_TASK`` files or about ``ROWS_PER_TASK`` shard rows per read task (fewer for data
too small to give every CPU two tasks), so every batch
mixes the classes as a uniform shuffle would, whatever order the listing or the shards are in.

- image files: the index checks every file first (``probe``): the whole of a small file is
  decoded at a tiny size, the header of a large one is read, so the epoch's size and the
  schedule count what decodes; what only a full decode finds (a large file truncated) is
  skipped when met and the loop adapts. Fetches run ``FETCH_THREADS`` at a time (an object
  store GET is mostly latency); when every file sits in a sub-folder of the root, the
  sub-folders, sorted, are the classes.
- Parquet shards: rows per row group from the footers; decoded in slices of ``DECODE_ROWS``.

Why not ``read_binary_files`` / ``read_parquet``: their readers group small files into read
tasks by bytes, so a few hundred MB of data is a single task and every other CPU idles
(benchmarks/README.md, "Data pipeline"), and they shuffle only whole files.

What cannot be fetched or decoded is dropped and counted per reason in a ``SkipCounter``
actor, never raised.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from ssl_ray.data.decode import PROBE_BYTES, UNREADABLE, decode_column, probe_image
from ssl_ray.data.errors import DataSourceError, warn
from ssl_ray.data.objectstore import StoredFile, describe_failure, filesystem_for, list_files
from ssl_ray.data.order import ShuffledUnits, units_per_task
from ssl_ray.data.subsets import EVERY_ROW, Selection
from ssl_ray.sections import DataConfig, StorageConfig
from ssl_ray.views.parts import SAMPLE_INDEX

FILES_PER_TASK = 64
FETCH_THREADS = 16
DECODE_ROWS = 512  # rows decoded (and given views) together: per-call overheads amortised, blocks modest
BLOCK_BYTES = 8 << 20  # ... and at most about this much decoded image a block
ROWS_PER_TASK = 512  # shard rows per read task, in whole row groups (at least one)

MANIFEST = "manifest.json"


@functools.lru_cache(maxsize=8)
def listing(url: str, storage: StorageConfig) -> tuple[StoredFile, ...]:
    """One listing per location per process: training and the kNN bank read the same files."""
    return tuple(list_files(url, storage.endpoint_url, storage.region))


@dataclass
class FileSource:
    dataset: ray.data.Dataset  # image (uint8), label (int64, -1 when unknown)
    size: int  # rows the read will give (after the listing's check and the selection)
    classes: tuple[str, ...]  # empty when the data has no labels
    labels: np.ndarray  # each of those rows' label (-1 when unknown)
    total: int  # rows the source has, before the selection
    row_names: tuple[str, ...] = ()  # with a label fraction: the files (or shard rows) it kept
    skipped: dict[str, int] = field(default_factory=dict)  # files the listing's check left out, per reason


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


def fetch(filesystem: pa.fs.FileSystem, paths: list[str], limit: int | None = None) -> list[bytes | None]:
    """Each file's bytes (its first ``limit``), ``None`` for one that is gone or unreadable,
    ``FETCH_THREADS`` at a time."""

    def one(path: str) -> bytes | None:
        try:
            with filesystem.open_input_stream(path) as stream:
                return stream.read() if limit is None else stream.read(limit)
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


def count_skips(counter, kept: int, skipped: dict[str, list[str]]) -> None:
    """Waits for the counter to take the counts (a millisecond per batch), so that once a batch
    has been consumed its skips are counted: no count is still in flight when it is read."""
    if counter is not None:
        ray.get(counter.add.remote(kept, {k: len(v) for k, v in skipped.items()}, skipped))


def path_blocks(rows: list[dict], per_block: int) -> ray.data.Dataset:
    """``rows`` (paths and what goes with them) as blocks of ``per_block``: one task each."""
    return ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / per_block)))


# -- image files --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageIndex:
    """A folder's files that passed the listing's check, with their folder labels."""

    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    skipped: dict[str, int]  # per reason, of the listed files


def _probe_batch(batch: dict[str, np.ndarray], filesystem) -> dict[str, np.ndarray]:
    paths = [str(p) for p in batch["path"]]
    heads = fetch(filesystem, paths, PROBE_BYTES)
    reasons = [probe_image(head, int(size) <= PROBE_BYTES) or "" for head, size in zip(heads, batch["size"])]
    return {"path": np.array(paths, dtype=object), "reason": np.array(reasons, dtype=object)}


def _probe(files: tuple[StoredFile, ...], filesystem) -> dict[str, str]:
    """Every listed file's skip reason ("" for a file that looks decodable), checked in Ray
    Data tasks of ``FILES_PER_TASK`` files: one (ranged) read per file."""
    rows = [{"path": f.path, "size": f.size} for f in files]
    checked = path_blocks(rows, FILES_PER_TASK).map_batches(
        _probe_batch, fn_kwargs={"filesystem": filesystem}, batch_size=None, batch_format="numpy"
    )
    reasons: dict[str, str] = {}
    for batch in checked.iter_batches(batch_size=None, batch_format="numpy"):
        reasons.update(zip(map(str, batch["path"]), map(str, batch["reason"])))
    return reasons


@functools.lru_cache(maxsize=8)
def image_index(url: str, storage: StorageConfig) -> ImageIndex:
    """The listing, checked once per location per process."""
    files = listing(url, storage)
    filesystem, root = filesystem_for(url, storage.endpoint_url, storage.region)
    reasons = _probe(files, filesystem)
    kept = [f.path for f in files if not reasons.get(f.path)]
    classes = folder_classes(root, kept)  # a folder with no decodable image is no class
    skipped = dict(Counter(reason for reason in reasons.values() if reason))
    return ImageIndex(tuple(kept), folder_labels(kept, root, classes), classes, skipped)


def _read_images(units: list[tuple[str, int, int]], filesystem, channels: int, size: int, counter) -> Iterator[dict]:
    paths = [path for path, _, _ in units]
    kept, images, _, skipped = fetch_and_decode(filesystem, paths, channels, size)
    count_skips(counter, len(kept), skipped)
    yield {
        "image": images,
        "label": np.array([units[i][1] for i in kept], dtype=np.int64),
        SAMPLE_INDEX: np.array([units[i][2] for i in kept], dtype=np.int64),
        "path": np.array([paths[i] for i in kept], dtype=object),
    }


def image_files(
    url: str,
    storage: StorageConfig,
    channels: int,
    size: int,
    counter=None,
    selection: Selection = EVERY_ROW,
) -> FileSource:
    """The checked files under ``url``, ``selection``'s rows of them."""
    index = image_index(url, storage)
    if not index.paths:
        raise DataSourceError(f"{url}: none of the {sum(index.skipped.values())} files is a decodable image")
    filesystem, _ = filesystem_for(url, storage.endpoint_url, storage.region)
    chosen = selection.rows(index.labels, url)
    units = [(index.paths[i], int(index.labels[i]), position) for position, i in enumerate(chosen)]
    read = functools.partial(_read_images, filesystem=filesystem, channels=channels, size=size, counter=counter)
    rows = [1] * len(units)
    source = ShuffledUnits(
        units, rows, units_per_task(rows, FILES_PER_TASK), read, selection.shuffle_seed, "ReadImageFiles"
    )
    return FileSource(
        source.dataset(),
        len(units),
        index.classes,
        index.labels[chosen],
        len(index.paths),
        tuple(path for path, _, _ in units) if selection.label_fraction is not None else (),
        dict(index.skipped),
    )


# -- Parquet shards -----------------------------------------------------------------------


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


@dataclass(frozen=True)
class ShardIndex:
    """Every row group of the shards under a location, and every row's label."""

    groups: tuple[tuple[str, int, int, int], ...]  # (shard, row group, its first row in the shard, rows)
    labels: np.ndarray  # per row, groups in order (-1 without a label column)
    classes: tuple[str, ...]
    columns: tuple[str, ...]  # what a read takes
    label_column: str | None

    @functools.cached_property
    def starts(self) -> np.ndarray:
        """Each group's first row in ``labels`` (and the total last)."""
        return np.cumsum([0, *(rows for *_, rows in self.groups)])

    def group_of(self, rows: np.ndarray) -> np.ndarray:
        """The group each of ``rows`` (indices into ``labels``) sits in."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    @functools.cached_property
    def single_class(self) -> np.ndarray:
        """Per group: all its rows of one class (a shard sorted by class). False without labels."""
        if not self.label_column:
            return np.zeros(len(self.groups), dtype=bool)
        return np.array([len(np.unique(self.labels[a:b])) == 1 for a, b in zip(self.starts[:-1], self.starts[1:])])


def _shard_layout(path: str, filesystem, label_column: str | None) -> tuple[list[int], np.ndarray | None]:
    """Rows per row group from the footer, and the label column alone (one small read)."""
    metadata = pq.read_metadata(path, filesystem=filesystem)
    sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    if label_column is None:
        return sizes, None
    column = pq.read_table(path, columns=[label_column], filesystem=filesystem)[label_column]
    return sizes, column.fill_null(-1).to_numpy().astype(np.int64)


@functools.lru_cache(maxsize=8)
def shard_index(url: str, config: DataConfig, storage: StorageConfig) -> ShardIndex:
    files = [f for f in listing(url, storage) if f.path.endswith(".parquet")]
    if not files:
        raise DataSourceError(f"{url}: no .parquet files under this prefix")
    filesystem, _ = filesystem_for(url, storage.endpoint_url, storage.region)
    schema = pq.read_schema(files[0].path, filesystem=filesystem)
    if config.image_column not in schema.names:
        raise DataSourceError(f"{url}: no column {config.image_column!r} (columns: {', '.join(schema.names)})")
    label_column = config.label_column if config.label_column in schema.names else None
    columns = (
        config.image_column,
        *([label_column] if label_column else []),
        *(["path"] if "path" in schema.names else []),
    )
    with ThreadPoolExecutor(min(FETCH_THREADS, len(files))) as pool:
        layouts = list(pool.map(lambda f: _shard_layout(f.path, filesystem, label_column), files))
    groups, labels = [], []
    for stored, (sizes, shard_labels) in zip(files, layouts):
        first = 0
        for group, rows in enumerate(sizes):
            groups.append((stored.path, group, first, rows))
            first += rows
        labels.append(shard_labels if shard_labels is not None else np.full(first, -1, dtype=np.int64))
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    classes: tuple[str, ...] = ()
    if label_column:
        # Our shards name their classes in the manifest; shards written elsewhere: 0..max, by number.
        named = tuple((read_manifest(url, storage) or {}).get("classes", ()))
        classes = named or tuple(str(i) for i in range(int(labels.max(initial=-1)) + 1))
    return ShardIndex(tuple(groups), labels, classes, columns, label_column)


def _decode_rows(records: pa.Table, channels, size, image_column, label_column, counter) -> dict[str, np.ndarray]:
    encoded = records.column(image_column).to_pylist()
    paths = records.column("path").to_pylist()
    kept, images, skipped = decode_column(encoded, paths, channels, size)
    if label_column:
        labels = records.column(label_column).fill_null(-1).to_numpy().astype(np.int64)[kept]
    else:
        labels = np.full(len(kept), -1, dtype=np.int64)
    count_skips(counter, len(kept), skipped)
    sample_index = records.column(SAMPLE_INDEX).to_numpy()[kept]
    return {"image": images, "label": labels, SAMPLE_INDEX: sample_index}


def decode_slice_rows(size: int, channels: int) -> int:
    """Rows decoded (and given views) together: ``DECODE_ROWS``, fewer for large images, so a
    block stays near ``BLOCK_BYTES`` decoded. A 300-row block of 256 px RGB images was a
    240 MB float tensor in the views step and ran at 0.6x the per-image speed of 75 rows."""
    return int(min(DECODE_ROWS, max(16, BLOCK_BYTES // (size * size * channels))))


def _read_groups(units, filesystem, columns, counter, shuffle: bool, **decode) -> Iterator[dict[str, np.ndarray]]:
    """The task's row groups (each from a random place in the data), their chosen rows (in a
    random order when training reads them), decoded a slice at a time. A group that cannot be
    read counts its rows as unreadable."""
    tables = []
    for shard, group, first, positions, rows, sample_start in units:
        try:
            with filesystem.open_input_file(shard) as handle:
                table = pq.ParquetFile(handle).read_row_group(group, columns=list(columns))
        except (OSError, pa.ArrowException):
            count_skips(counter, 0, {UNREADABLE: [f"{shard} row group {group}"] * rows})
            continue
        if positions is not None:
            table = table.take(pa.array(positions))
        offsets = np.arange(first, first + table.num_rows) if positions is None else first + np.asarray(positions)
        names = (
            table.column("path")
            if "path" in table.column_names
            else pa.array([f"{shard} row {row}" for row in offsets], type=pa.string())
        )
        table = table.select([c for c in table.column_names if c != "path"]).append_column("path", names)
        # The rows' places in the selection: the chosen rows are sorted, a unit's contiguous.
        table = table.append_column(SAMPLE_INDEX, pa.array(np.arange(sample_start, sample_start + table.num_rows)))
        tables.append(table)
    if not tables:
        return
    table = pa.concat_tables(tables)
    if shuffle:  # each slice a draw from every group of the task, not one group's rows
        table = table.take(pa.array(np.random.permutation(table.num_rows)))
    step = decode_slice_rows(decode["size"], decode["channels"])
    for start in range(0, table.num_rows, step):
        yield _decode_rows(table.slice(start, step), counter=counter, **decode)


class ShardUnit(NamedTuple):
    """What one read takes of a shard: a row group, or the chosen rows of it."""

    shard: str
    group: int
    first: int  # the group's first row in the shard
    positions: list[int] | None  # the chosen rows' places in the group; None: all of them
    rows: int
    sample_start: int  # the sample index of the unit's first row


def _units_from_rows(index: ShardIndex, chosen: np.ndarray) -> list[ShardUnit]:
    """The chosen rows (sorted indices into ``index.labels``) as row-group units; the
    selection's rows are numbered 0..n-1 in listing order."""
    group_of = index.group_of(chosen)
    units, taken = [], 0
    for g in np.unique(group_of):
        shard, group, first, rows = index.groups[g]
        positions = chosen[group_of == g] - index.starts[g]
        whole = len(positions) == rows
        units.append(ShardUnit(shard, group, first, None if whole else positions.tolist(), len(positions), taken))
        taken += len(positions)
    return units


# Fewer groups than this in a read task cannot give a batch many classes when each group is
# of one class: groups of more than ROWS_PER_TASK // MIXING_GROUPS rows are warned about.
MIXING_GROUPS = 8


def _rows_in_single_class_groups(index: ShardIndex, larger_than: int = 1) -> int:
    """Rows in row groups of one class (and more than ``larger_than`` rows): shards sorted by class."""
    sizes = np.array([rows for *_, rows in index.groups])
    return int(sizes[index.single_class & (sizes > larger_than)].sum())


def _warn_if_unmixable(url: str, index: ShardIndex) -> None:
    """A row group is the smallest thing a read takes; groups of one class, each too big for a
    read task to hold several, cannot be mixed into class-mixed batches by any read order."""
    if _rows_in_single_class_groups(index, ROWS_PER_TASK // MIXING_GROUPS) > len(index.labels) / 2:
        warn(
            f"{url}: most rows sit in row groups of a single class and more than {ROWS_PER_TASK // MIXING_GROUPS} "
            "rows, so training batches cannot mix the classes; rewrite the shards with `ssl-ray prepare` "
            "(random order, small row groups)"
        )


def parquet_shards(
    url: str,
    config: DataConfig,
    storage: StorageConfig,
    size: int,
    counter=None,
    selection: Selection = EVERY_ROW,
) -> FileSource:
    """``selection``'s rows of the shards under ``url``."""
    index = shard_index(url, config, storage)
    filesystem, _ = filesystem_for(url, storage.endpoint_url, storage.region)
    chosen = selection.rows(index.labels, url)
    units = _units_from_rows(index, chosen)
    if selection.shuffle_seed is not None:
        _warn_if_unmixable(url, index)
    rows = [unit.rows for unit in units]
    # Shards sorted by class: mixing comes first, ROWS_PER_TASK rows of many groups a task.
    sorted_by_class = _rows_in_single_class_groups(index) > len(index.labels) / 2
    per_task = units_per_task(rows, ROWS_PER_TASK, spread_over_cpus=not sorted_by_class)
    read = functools.partial(
        _read_groups,
        filesystem=filesystem,
        columns=index.columns,
        counter=counter,
        shuffle=selection.shuffle_seed is not None,
        channels=config.channels,
        size=size,
        image_column=config.image_column,
        label_column=index.label_column,
    )
    source = ShuffledUnits(units, rows, per_task, read, selection.shuffle_seed, "ReadImageShards")
    names = ()
    if selection.label_fraction is not None:
        names = tuple(
            f"{index.groups[g][0]} row {index.groups[g][2] + row - index.starts[g]}"
            for g, row in zip(index.group_of(chosen), chosen)
        )
    return FileSource(source.dataset(), int(sum(rows)), index.classes, index.labels[chosen], len(index.labels), names)
