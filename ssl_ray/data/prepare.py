"""``ssl-ray prepare``: a folder or bucket of images (or Fashion-MNIST, or OpenClipart's
drawings as a train and a test set, or scenes of either with per-pixel class masks for dense
evaluation, ``--scenes``) -> Parquet shards.

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
from ssl_ray.data import fashion_mnist, openclipart, scenes
from ssl_ray.data.decode import UNREADABLE
from ssl_ray.data.errors import DataSourceError
from ssl_ray.data.files import (
    FILES_PER_TASK,
    MANIFEST,
    count_skips,
    fetch,
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
    source: str = "images"  # or "fashion_mnist", "openclipart"
    split: str = "train"  # fashion_mnist only
    shard_mb: float = 64.0
    seed: int = 0  # the order images are written in (and openclipart's split)
    size: int = openclipart.DEFAULT_SIZE  # openclipart only: the side of its squares
    test_share: float = openclipart.DEFAULT_TEST_SHARE  # openclipart only
    # Scenes with masks (``data.scenes``) rather than single images: this many to train on
    # (the test set gets its test share's worth), of ``scene_size`` px, 1 to ``scene_objects``
    # objects each; 0: no scenes.
    scenes: int = 0
    scene_size: int | None = None  # default: 96 for openclipart, 56 for fashion_mnist
    scene_objects: int = 3
    storage: StorageConfig = StorageConfig()


def _shard_rows(images: list[bytes], labels, paths: list[str], keep: list[int]) -> pa.Table:
    """The columns a shard holds, for the rows ``keep``."""
    return pa.table(
        {
            "image": pa.array([images[i] for i in keep], type=pa.binary()),
            "label": pa.array(np.asarray(labels, dtype=np.int64)[keep], type=pa.int64()),
            "path": pa.array([paths[i] for i in keep], type=pa.string()),
        }
    )


def _fetch_and_check(batch, filesystem, counter):
    paths = [str(p) for p in batch["path"]]
    keep, _, encoded, skipped = fetch_and_decode(filesystem, paths, 3, _CHECK_SIZE)
    count_skips(counter, len(keep), skipped)
    return _shard_rows(encoded, batch["label"], paths, keep)


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def _listed(src: str, options: PrepareOptions):
    """``(files, filesystem, paths, classes, labels)`` of the checked listing of ``src``, the
    classes its sub-folders."""
    files = listing(src, options.storage)
    filesystem, root = filesystem_for(src, options.storage.endpoint_url, options.storage.region)
    paths = [f.path for f in files]
    classes = folder_classes(root, paths)
    return files, filesystem, paths, classes, folder_labels(paths, root, classes)


def _images(src: str, options: PrepareOptions, counter) -> tuple[ray.data.Dataset, tuple[str, ...], float]:
    """The listed files in a seeded random order, so that every shard holds a random draw of
    the images (a folder-per-class listing in order would give one class per shard) without
    moving any image bytes through a shuffle."""
    files, filesystem, paths, classes, labels = _listed(src, options)
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
    table = _shard_rows(encoded, split.labels, paths, list(range(len(encoded))))
    return ray.data.from_arrow(table), fashion_mnist.CLASSES, sum(map(len, encoded)) / len(encoded)


def _fetch_and_fit(batch, filesystem, counter, size):
    paths = [str(p) for p in batch["path"]]
    fitted, skipped = [], {}
    for path, raw in zip(paths, fetch(filesystem, paths)):
        result = openclipart.fit_on_white(raw, size) if raw is not None else UNREADABLE
        if isinstance(result, str):
            skipped.setdefault(result, []).append(path)
        fitted.append(result)
    keep = [i for i, result in enumerate(fitted) if not isinstance(result, str)]
    count_skips(counter, len(keep), skipped)
    return _shard_rows(fitted, batch["label"], paths, keep)


def _refuse_a_used_destination(dst: str, storage: StorageConfig) -> None:
    filesystem, out = filesystem_for(dst, storage.endpoint_url, storage.region)
    try:
        existing = filesystem.get_file_info(pafs.FileSelector(out, allow_not_found=True))
    except OSError as error:
        raise DataSourceError(describe_failure(dst, error)) from None
    if any(info.base_name.endswith(".parquet") for info in existing):
        raise DataSourceError(f"{dst}: already holds Parquet shards; choose an empty destination")


def _write_shards(rows: ray.data.Dataset, dst: str, options: PrepareOptions, mean_bytes: float) -> list:
    """The rows as shards of about ``options.shard_mb``; returns the shards' file infos."""
    filesystem, out = filesystem_for(dst, options.storage.endpoint_url, options.storage.region)
    rows_per_shard = max(1, int(options.shard_mb * 2**20 / max(mean_bytes, 1.0)))
    try:
        rows.write_parquet(
            out, filesystem=filesystem, min_rows_per_file=rows_per_shard, max_rows_per_file=rows_per_shard
        )
    except OSError as error:
        raise DataSourceError(describe_failure(dst, error)) from None
    return [
        info
        for info in filesystem.get_file_info(pafs.FileSelector(out, recursive=True))
        if info.base_name.endswith(".parquet")
    ]


def _write_manifest(dst: str, options: PrepareOptions, manifest: dict) -> None:
    filesystem, out = filesystem_for(dst, options.storage.endpoint_url, options.storage.region)
    with filesystem.open_output_stream(f"{out}/{MANIFEST}") as stream:
        stream.write(json.dumps(manifest, indent=2).encode())


def _manifest(src, options, counter, classes, shards, started) -> dict:
    summary = ray.get(counter.summary.remote())
    return {
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


def prepare(src: str, dst: str, options: PrepareOptions) -> dict:
    """Write the shards and the manifest; returns the manifest (for ``openclipart``, the
    train set's and the test set's under ``dst/train`` and ``dst/test``: ``{"train": ...,
    "test": ...}``)."""
    started = time.time()
    if not ray.is_initialized():
        start_ray()
    if options.scenes:
        return _prepare_scenes(src, dst, options, started)
    if options.source == "openclipart":
        return _prepare_openclipart(src, dst, options, started)
    _refuse_a_used_destination(dst, options.storage)
    counter = SkipCounter.remote()
    read = _fashion_mnist if options.source == "fashion_mnist" else _images
    rows, classes, mean_bytes = read(src, options, counter)
    shards = _write_shards(rows, dst, options, mean_bytes)
    manifest = _manifest(src, options, counter, classes, shards, started)
    _write_manifest(dst, options, manifest)
    return manifest


def _prepare_openclipart(src: str, dst: str, options: PrepareOptions, started: float) -> dict:
    """OpenClipart's kept categories (``openclipart.choose_categories``), split stratified and
    seeded, each drawing fitted on a white square of ``options.size``; each set's manifest
    records the split, the categories kept and dropped and why, and its per-class counts."""
    dst = dst.rstrip("/")
    for side in ("train", "test"):
        _refuse_a_used_destination(f"{dst}/{side}", options.storage)
    filesystem, paths, kept, kept_labels, sides, split = _openclipart_split(src, options)
    manifests = {}
    for side, members in sides.items():
        counter = SkipCounter.remote()
        # A seeded order, so that every shard holds drawings of every category.
        order = np.random.default_rng(options.seed).permutation(members)
        rows = [{"path": paths[i], "label": int(kept_labels[i])} for i in order]
        fitted = path_blocks(rows, FILES_PER_TASK).map_batches(
            _fetch_and_fit,
            fn_kwargs={"filesystem": filesystem, "counter": counter, "size": options.size},
            batch_size=None,
            batch_format="numpy",
        )
        table = pa.concat_tables(ray.get(fitted.to_arrow_refs()))  # a few MiB at 64 px
        manifests[side] = _write_side(table, src, f"{dst}/{side}", options, counter, kept, started)
        manifests[side]["split"] = {"side": side, **split, "per_class": _per_class(table, kept)}
        _write_manifest(f"{dst}/{side}", options, manifests[side])
    return manifests


def _per_class(table: pa.Table, classes) -> dict[str, int]:
    labels = table["label"].to_numpy()
    return dict(zip(classes, np.bincount(labels[labels >= 0], minlength=len(classes)).tolist()))


def _write_side(table: pa.Table, src, dst: str, options: PrepareOptions, counter, classes, started) -> dict:
    """One set's rows as shards; returns its manifest, which the caller writes once it has
    added the split."""
    mean_bytes = sum(table[c].nbytes for c in ("image", "mask") if c in table.column_names) / max(1, table.num_rows)
    shards = _write_shards(ray.data.from_arrow(table), dst, options, mean_bytes)
    return _manifest(src, options, counter, classes, shards, started)


def _openclipart_split(src: str, options: PrepareOptions):
    """``(filesystem, paths, kept categories, their labels, {side: indices}, the split's
    record)`` of OpenClipart's drawings: the kept categories' drawings only, split stratified
    and seeded."""
    _, filesystem, paths, classes, labels = _listed(src, options)
    if not classes:
        raise DataSourceError(
            f"{src}: no category folders below it; OpenClipart's drawings sit in one folder per "
            f"category ({openclipart.SYSTEM_ROOT} once Debian's openclipart-png is installed)"
        )
    counts = {name: int(np.sum(labels == i)) for i, name in enumerate(classes)}
    kept, dropped = openclipart.choose_categories(counts)
    if not kept:
        raise DataSourceError(f"{src}: no category has {openclipart.MIN_DRAWINGS} drawings or more")
    renumber = {classes.index(name): k for k, name in enumerate(kept)}
    chosen = [i for i, label in enumerate(labels) if int(label) in renumber]
    kept_labels = np.array([renumber[int(labels[i])] for i in chosen], dtype=np.int64)
    sides = dict(zip(("train", "test"), openclipart.stratified_split(kept_labels, options.test_share, options.seed)))
    split = {
        "seed": options.seed,
        "test_share": options.test_share,
        "size": options.size,
        "categories_kept": list(kept),
        "categories_dropped": dropped,
        "listed": {side: len(members) for side, members in sides.items()},  # before decoding
    }
    return filesystem, [paths[i] for i in chosen], kept, kept_labels, sides, split


# -- scenes with masks ----------------------------------------------------------------------

SCENES_PER_TASK = 32


def _scene_counts(options: PrepareOptions) -> dict[str, int]:
    test = max(1, round(options.scenes * options.test_share / (1 - options.test_share)))
    return {"train": options.scenes, "test": test}


def _scene_table(rows: list[dict]) -> pa.Table:
    return pa.table(
        {
            "image": pa.array([r["image"] for r in rows], type=pa.binary()),
            "mask": pa.array([r["mask"] for r in rows], type=pa.binary()),
            "label": pa.array([r["label"] for r in rows], type=pa.int64()),
            "path": pa.array([r["path"] for r in rows], type=pa.string()),
            "sources": pa.array([r["sources"] for r in rows], type=pa.list_(pa.string())),
        }
    )


def _scene_row(side: str, index: int, image: np.ndarray, mask: np.ndarray, sources: list[str]) -> dict:
    """A scene's row; its label is the class that covers most of it (-1: none shows)."""
    covered = np.bincount(mask.ravel(), minlength=2)[1:]
    label = int(np.argmax(covered)) if covered.any() else -1
    return {
        "image": _encode_png(image),
        "mask": _encode_png(mask),
        "label": label,
        "path": f"scene-{side}-{index:06d}",
        "sources": sources,
    }


def _make_openclipart_scenes(batch, filesystem, counter, size, seed, side):
    rows, skipped = [], {}
    for index, paths, labels, texture in zip(batch["index"], batch["paths"], batch["labels"], batch["texture"]):
        wanted = [str(p) for p in paths] + [str(texture)]
        cutouts = {}
        for path, raw in zip(wanted, fetch(filesystem, wanted)):
            result = scenes.cutout(raw, size) if raw is not None else UNREADABLE
            if isinstance(result, str):
                skipped.setdefault(result, []).append(path)
            else:
                cutouts[path] = result
        drawings = [(*cutouts[str(p)], int(label)) for p, label in zip(paths, labels) if str(p) in cutouts]
        surface = cutouts.get(str(texture))
        rng = scenes.scene_rng(seed, side, int(index))
        image, mask = scenes.openclipart_scene(
            drawings, size, rng, None if surface is None else scenes.on_white(*surface)
        )
        rows.append(_scene_row(side, int(index), image, mask, [str(p) for p in paths] + [str(texture)]))
    count_skips(counter, len(rows), {reason: sorted(set(paths)) for reason, paths in skipped.items()})
    return _scene_table(rows)


def _scene_split(options: PrepareOptions, size: int, counts: dict[str, int], kept) -> dict:
    return {
        "seed": options.seed,
        "scene_size": size,
        "objects_per_scene": [1, options.scene_objects],
        "scenes": counts,
        "mask_classes": ["background", *kept],  # mask value v: this list's v-th name
        "no_source_on_both_sides": True,
    }


def _prepare_scenes(src: str, dst: str, options: PrepareOptions, started: float) -> dict:
    """Scenes of OpenClipart's drawings or Fashion-MNIST's items (``data.scenes``) with their
    masks, a train and a test set whose sources never meet: OpenClipart's drawings are split
    first (``_openclipart_split``) and each side's scenes use its own; Fashion-MNIST's
    training scenes use its training items, the test scenes its test items."""
    dst = dst.rstrip("/")
    for side in ("train", "test"):
        _refuse_a_used_destination(f"{dst}/{side}", options.storage)
    counts = _scene_counts(options)
    if options.source == "openclipart":
        size = options.scene_size or 96
        filesystem, paths, kept, kept_labels, sides, split = _openclipart_split(src, options)
    elif options.source == "fashion_mnist":
        size = options.scene_size or 56
        kept, split = fashion_mnist.CLASSES, {}
        sides = {side: fashion_mnist.load_split(src, side) for side in ("train", "test")}
    else:
        raise DataSourceError("--scenes: of --source openclipart or fashion_mnist")
    split = {**split, **_scene_split(options, size, counts, kept)}
    manifests = {}
    for side_id, (side, members) in enumerate(sides.items()):
        counter = SkipCounter.remote()
        picks = np.random.default_rng([options.seed, side_id, 7])
        per_scene = picks.integers(1, options.scene_objects + 1, counts[side])
        if options.source == "openclipart":
            specs = []
            for index, k in enumerate(per_scene):
                chosen = picks.choice(members, size=int(k) + 1, replace=False)  # the last: the texture
                specs.append(
                    {
                        "index": index,
                        "paths": [paths[i] for i in chosen[:-1]],
                        "labels": [int(kept_labels[i]) for i in chosen[:-1]],
                        "texture": paths[chosen[-1]],
                    }
                )
            made = path_blocks(specs, SCENES_PER_TASK).map_batches(
                _make_openclipart_scenes,
                fn_kwargs={
                    "filesystem": filesystem,
                    "counter": counter,
                    "size": size,
                    "seed": options.seed,
                    "side": side,
                },
                batch_size=None,
                batch_format="numpy",
            )
            table = pa.concat_tables(ray.get(made.to_arrow_refs()))
        else:
            rows = []
            for index, k in enumerate(per_scene):
                chosen = picks.choice(len(members.labels), size=int(k), replace=False)
                items = [(members.images[i], int(members.labels[i])) for i in chosen]
                image, mask = scenes.fashion_mnist_scene(items, size, scenes.scene_rng(options.seed, side, index))
                rows.append(_scene_row(side, index, image, mask, [f"{side}/{i}" for i in chosen]))
            table = _scene_table(rows)
            ray.get(counter.add.remote(len(rows), {}, {}))
        manifests[side] = _write_side(table, src, f"{dst}/{side}", options, counter, kept, started)
        manifests[side].update(format="ssl-ray scene shards 1", mask_column="mask")
        manifests[side]["split"] = {"side": side, **split, "per_class": _per_class(table, kept)}
        _write_manifest(f"{dst}/{side}", options, manifests[side])
    return manifests
