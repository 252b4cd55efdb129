"""Sources -> ``ray.data.Dataset``s of uint8 images and labels, and the pretraining datasets.

Every source produces blocks with an ``image`` column (uint8, (H, W) or (H, W, C)) and a
``label`` column (int64, -1 when unknown). Views are made from them inside Ray Data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import ray.data
from ray.data.extensions import ArrowTensorArray

from ssl_ray.config import PipelineConfig
from ssl_ray.data import fashion_mnist, files
from ssl_ray.data.balance import balanced
from ssl_ray.data.errors import DataSourceError
from ssl_ray.data.subsets import Selection, stratified_sample
from ssl_ray.views.parts import SAMPLE_INDEX
from ssl_ray.views.recipe import BatchRecipe

ROWS_PER_BLOCK = 2048


def from_arrays(images: np.ndarray, labels: np.ndarray, numbered: bool = False) -> ray.data.Dataset:
    """In-memory images and labels (``numbered``: and each row's ``sample_index``, its place
    here, as training reads need) as a dataset of several blocks (so shuffles and the worker
    split have something to work with)."""
    tables = []
    for i in range(0, len(images), ROWS_PER_BLOCK):
        columns = {
            "image": ArrowTensorArray.from_numpy(np.ascontiguousarray(images[i : i + ROWS_PER_BLOCK])),
            "label": pa.array(labels[i : i + ROWS_PER_BLOCK]),
        }
        if numbered:
            columns[SAMPLE_INDEX] = pa.array(np.arange(i, min(i + ROWS_PER_BLOCK, len(images)), dtype=np.int64))
        tables.append(pa.table(columns))
    return ray.data.from_arrow(tables)


def make_views(
    batch: dict[str, np.ndarray], recipe: BatchRecipe, channels: int, stage: str = "all"
) -> dict[str, np.ndarray]:
    """Views of a whole block, rows in a fresh random order. With the block order also
    randomised each epoch, every training batch is a new random draw of images (not the same
    256 neighbours in a new order) at no extra cost; a global shuffle would move all the data.
    A fresh view maker per block costs about a millisecond and keeps this a plain task, which
    Ray Data can schedule on whatever CPU is free."""
    order = np.random.permutation(len(batch["image"]))
    maker = recipe.view_maker(channels, stage=stage)
    return maker({key: value[order] for key, value in batch.items()})


@dataclass
class PretrainData:
    train: ray.data.Dataset  # the batch recipe's columns: view0, view1, ... (uint8 (C, S, S)), parts, label
    knn_bank: ray.data.Dataset | None  # image, label: labelled training images (None: no kNN)
    knn_query: ray.data.Dataset | None  # image, label: held-out images
    train_size: int  # images an epoch will see: counted after the listing's check, not listed
    num_classes: int
    # With ``data.label_fraction``: which training images were kept (indices or file paths).
    label_subset: list[str] | None = None
    bank_labels: np.ndarray | None = None  # the kNN bank's labels (what k must fit)
    # Training files the listing's check left out, per reason: every epoch goes without them.
    listing_skips: dict[str, int] = field(default_factory=dict)
    # With ``whole_training_set``: every training image once, without views, in listing order
    # (image, label, sample_index): what a method that fits targets to it embeds.
    training_images: ray.data.Dataset | None = None


def with_views(images: ray.data.Dataset, recipe: BatchRecipe, channels: int, stage: str = "all") -> ray.data.Dataset:
    """The method's batch recipe (its views and parts) block by block (``batch_size=None``);
    ``stage="crop"``: crops and flips only, the colour
    part of the recipe runs on the training device (``views.DeviceViews``). A row count here would also bundle the
    blocks of the read this step fuses with, and a read's blocks are shard paths: 2,048 rows
    would put 2,048 shards in one task and leave every other CPU idle (benchmarks/README.md)."""
    return images.map_batches(
        make_views,
        fn_kwargs={"recipe": recipe, "channels": channels, "stage": stage},
        batch_size=None,
        batch_format="numpy",
    )


def _training_stream(images: ray.data.Dataset, config: PipelineConfig, stage: str, balance, size: int):
    """The training images to views, drawn by the weights ``balance`` holds when there is one."""
    if balance is not None:
        images = balanced(images, balance, size)
    return with_views(images, config.batch_recipe, config.data.channels, stage)


def _fashion_mnist(config: PipelineConfig, stage: str, balance, whole_training_set: bool) -> PretrainData:
    data, e, seed = config.data, config.eval, config.train.seed
    train = fashion_mnist.load_split(data.path, "train")
    test = fashion_mnist.load_split(data.path, "test")
    training = Selection(
        size=data.train_subset, seed=seed, label_fraction=data.label_fraction, label_seed=data.label_seed
    )
    kept = training.rows(train.labels, data.path)
    bank = stratified_sample(train.labels, e.knn_bank_size, seed)
    query = stratified_sample(test.labels, e.knn_query_size, seed)
    pretrain = from_arrays(train.images[kept], train.labels[kept], numbered=True)
    return PretrainData(
        train=_training_stream(pretrain.randomize_block_order(), config, stage, balance, len(kept)),
        knn_bank=from_arrays(train.images[bank], train.labels[bank]),
        knn_query=from_arrays(test.images[query], test.labels[query]),
        train_size=len(kept),
        num_classes=len(fashion_mnist.CLASSES),
        label_subset=[str(i) for i in kept] if data.label_fraction is not None else None,
        bank_labels=train.labels[bank],
        training_images=pretrain if whole_training_set else None,
    )


def _read(path: str, kind: str, config: PipelineConfig, selection: Selection, counter=None) -> files.FileSource:
    data, size = config.data, config.data.decode_size or config.augment.image_size
    if kind == "images":
        return files.image_files(path, config.storage, data.channels, size, counter, selection)
    return files.parquet_shards(path, data, config.storage, size, counter, selection)


def _relabel(batch: dict[str, np.ndarray], table: np.ndarray) -> dict[str, np.ndarray]:
    labels = np.asarray(batch["label"])
    return {**batch, "label": np.where(labels >= 0, table[np.clip(labels, 0, None)], -1)}


def in_training_classes(
    held_out: files.FileSource, classes: tuple[str, ...]
) -> tuple[ray.data.Dataset, tuple[str, ...]]:
    """The held-out set's labels as indices into the training set's classes, matched by name
    (class folders of a validation split need not be the same set, nor sort the same way), and
    the classes of both: the training set's, then any only the held-out set has. Sets whose
    class names share nothing (numbered shard labels beside named folders) keep their indices."""
    if not classes or not held_out.classes or not set(classes) & set(held_out.classes):
        return held_out.dataset, classes if len(classes) >= len(held_out.classes) else held_out.classes
    joint = classes + tuple(name for name in held_out.classes if name not in classes)
    table = np.array([joint.index(name) for name in held_out.classes], dtype=np.int64)
    if (table == np.arange(len(table))).all():
        return held_out.dataset, joint
    relabelled = held_out.dataset.map_batches(
        _relabel, fn_kwargs={"table": table}, batch_size=None, batch_format="numpy"
    )
    return relabelled, joint


def _from_files(config: PipelineConfig, counter, stage: str, balance, whole_training_set: bool) -> PretrainData:
    """Every location is listed here, on the driver, so a bad one fails before training."""
    data, e, seed = config.data, config.eval, config.train.seed
    training = Selection(
        size=data.train_subset,
        seed=seed,
        label_fraction=data.label_fraction,
        label_seed=data.label_seed,
        shuffle_seed=seed,
    )
    train = _read(data.path, data.source, config, training, counter)
    bank = query = None
    num_classes = len(train.classes)
    if data.val_path is not None:
        query = _read(data.val_path, data.val_source or data.source, config, Selection(e.knn_query_size, seed))
        query.dataset, classes = in_training_classes(query, train.classes)
        num_classes = len(classes)
        if num_classes:
            # The bank: labelled training images without views (its own read; never counted).
            bank = _read(data.path, data.source, config, Selection(e.knn_bank_size, seed))
    whole = None
    if whole_training_set:  # the same selection, so the same sample indices, read in listing order
        whole = _read(data.path, data.source, config, replace(training, shuffle_seed=None))
    columns = ["image", "label", SAMPLE_INDEX]
    return PretrainData(
        train=_training_stream(train.dataset.select_columns(columns), config, stage, balance, train.size),
        knn_bank=bank.dataset.select_columns(["image", "label"]) if bank else None,
        knn_query=query.dataset.select_columns(["image", "label"]) if query else None,
        train_size=train.size,
        num_classes=num_classes,
        label_subset=list(train.row_names) if data.label_fraction is not None else None,
        bank_labels=bank.labels if bank else None,
        listing_skips=train.skipped,
        training_images=whole.dataset.select_columns(columns) if whole else None,
    )


def check_data_locations(config: PipelineConfig) -> None:
    """List every location the run will read (cached for the run): ``DataSourceError`` with
    the URL and the cause if one is missing, empty or unreachable."""
    if config.data.source == "fashion_mnist":
        return
    for path in (config.data.path, config.data.val_path):
        if path is not None:
            files.listing(path, config.storage)


def build_pretrain_data(
    config: PipelineConfig,
    counter=None,
    augment_on_device: bool = False,
    balance=None,
    whole_training_set: bool = False,
) -> PretrainData:
    """The datasets a pretraining run needs; ``counter`` (a ``SkipCounter``) hears about every
    training file that could not be decoded. ``augment_on_device``: the views leave Ray Data
    cropped but otherwise untouched (uint8); the training loop applies the rest. ``balance``
    (a ``balance.ClassBalance``): training images drawn by its weights. ``whole_training_set``:
    also every training image once, without views (``training_images``)."""
    stage = "crop" if augment_on_device else "all"
    if config.data.source == "fashion_mnist":
        return _fashion_mnist(config, stage, balance, whole_training_set)
    return _from_files(config, counter, stage, balance, whole_training_set)


@dataclass
class EvalData:
    train: ray.data.Dataset  # image, label: labelled training images (probe fit, kNN bank)
    test: ray.data.Dataset  # image, label: held-out images (what is reported)
    classes: tuple[str, ...]  # names, by label index
    train_count: int  # labelled training images (after the listing's check)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def build_eval_data(
    config: PipelineConfig, train_size: int | None = None, test_size: int | None = None, seed: int = 0
) -> EvalData:
    """The labelled images the evaluation protocols need: the training set and the test set
    (``data.val_path``), each a class-stratified sample of ``train_size`` / ``test_size``
    images drawn with ``seed`` (None: all)."""
    data = config.data
    if data.source == "fashion_mnist":
        train = fashion_mnist.load_split(data.path, "train")
        test = fashion_mnist.load_split(data.path, "test")
        bank = stratified_sample(train.labels, train_size, seed)
        query = stratified_sample(test.labels, test_size, seed)
        return EvalData(
            train=from_arrays(train.images[bank], train.labels[bank]),
            test=from_arrays(test.images[query], test.labels[query]),
            classes=tuple(fashion_mnist.CLASSES),
            train_count=len(train.labels),
        )
    if data.val_path is None:
        raise DataSourceError("evaluation needs a labelled test set: set data.val_path")
    train = _read(data.path, data.source, config, Selection(train_size, seed))
    test = _read(data.val_path, data.val_source or data.source, config, Selection(test_size, seed))
    test.dataset, classes = in_training_classes(test, train.classes)
    if not classes:
        raise DataSourceError(
            f"{data.path}: no labels to evaluate with (one sub-folder per class, or a label column in the shards)"
        )
    return EvalData(
        train=train.dataset.select_columns(["image", "label"]),
        test=test.dataset.select_columns(["image", "label"]),
        classes=tuple(classes),
        train_count=train.total,
    )
