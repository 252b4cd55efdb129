"""Sources -> ``ray.data.Dataset``s of uint8 images and labels, and the pretraining datasets.

Every source produces blocks with an ``image`` column (uint8, (H, W) or (H, W, C)) and a
``label`` column (int64, -1 when unknown). Views are made from them inside Ray Data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray.data
from ray.data.extensions import ArrowTensorArray

from ssl_ray.config import PipelineConfig
from ssl_ray.data import fashion_mnist, files
from ssl_ray.data.errors import DataSourceError
from ssl_ray.data.subsets import balanced_subset
from ssl_ray.data.views import ViewMaker

ROWS_PER_BLOCK = 2048


def from_arrays(images: np.ndarray, labels: np.ndarray) -> ray.data.Dataset:
    """In-memory images and labels as a dataset of several blocks (so shuffles and the
    worker split have something to work with)."""
    tables = [
        pa.table(
            {
                "image": ArrowTensorArray.from_numpy(np.ascontiguousarray(images[i : i + ROWS_PER_BLOCK])),
                "label": pa.array(labels[i : i + ROWS_PER_BLOCK]),
            }
        )
        for i in range(0, len(images), ROWS_PER_BLOCK)
    ]
    return ray.data.from_arrow(tables)


def make_views(batch: dict[str, np.ndarray], augment, channels: int, stage: str = "all") -> dict[str, np.ndarray]:
    """Views of a whole block, rows in a fresh random order. With the block order also
    randomised each epoch, every training batch is a new random draw of images (not the same
    256 neighbours in a new order) at no extra cost; a global shuffle would move all the data.
    A fresh ViewMaker per block costs about a millisecond and keeps this a plain task, which
    Ray Data can schedule on whatever CPU is free."""
    order = np.random.permutation(len(batch["image"]))
    maker = ViewMaker(augment, channels, stage=stage)
    return maker({key: value[order] for key, value in batch.items()})


@dataclass
class PretrainData:
    train: ray.data.Dataset  # view0, view1, ... (uint8 (C, S, S), S the view's size), label
    knn_bank: ray.data.Dataset | None  # image, label: labelled training images (None: no kNN)
    knn_query: ray.data.Dataset | None  # image, label: held-out images
    train_size: int
    num_classes: int
    # With ``data.label_fraction``: which training images were kept (indices or file paths).
    label_subset: list[str] | None = None


def with_views(images: ray.data.Dataset, augment, channels: int, stage: str = "all") -> ray.data.Dataset:
    """Views block by block (``batch_size=None``); ``stage="crop"``: crops only, the colour
    part of the recipe runs on the training device (``views.DeviceViews``). A row count here would also bundle the
    blocks of the read this step fuses with, and a read's blocks are shard paths: 2,048 rows
    would put 2,048 shards in one task and leave every other CPU idle (benchmarks/README.md)."""
    return images.map_batches(
        make_views,
        fn_kwargs={"augment": augment, "channels": channels, "stage": stage},
        batch_size=None,
        batch_format="numpy",
    )


def _fashion_mnist(config: PipelineConfig, stage: str) -> PretrainData:
    data = config.data
    train = fashion_mnist.load_split(data.path, "train")
    test = fashion_mnist.load_split(data.path, "test")
    train_size = min(len(train.images), data.train_subset or len(train.images))
    bank_size = min(len(train.images), config.eval.knn_bank_size or len(train.images))
    query_size = min(len(test.images), config.eval.knn_query_size or len(test.images))
    kept = np.arange(train_size)
    if data.label_fraction is not None:
        kept = balanced_subset(train.labels[:train_size], data.label_fraction, data.label_seed)
    pretrain = from_arrays(train.images[kept], train.labels[kept])
    return PretrainData(
        train=with_views(pretrain.randomize_block_order(), config.augment, data.channels, stage),
        knn_bank=from_arrays(train.images[:bank_size], train.labels[:bank_size]),
        knn_query=from_arrays(test.images[:query_size], test.labels[:query_size]),
        train_size=len(kept),
        num_classes=len(fashion_mnist.CLASSES),
        label_subset=[str(i) for i in kept] if data.label_fraction is not None else None,
    )


def _read(
    path: str,
    kind: str,
    config: PipelineConfig,
    limit: int | None,
    counter=None,
    shuffle: bool = False,
    label_subset: tuple[float, int] | None = None,
) -> files.FileSource:
    if label_subset is not None and kind != "images":
        raise DataSourceError(
            f"{path}: data.label_fraction needs loose images in class folders (or Fashion-MNIST); "
            "for shards, prepare the subset's folder as shards of its own"
        )
    data, size = config.data, config.data.decode_size or config.augment.image_size
    if kind == "images":
        return files.image_files(path, config.storage, data.channels, size, limit, counter, shuffle, label_subset)
    return files.parquet_shards(path, data, config.storage, size, counter, limit, shuffle)


def _from_files(config: PipelineConfig, counter, stage: str) -> PretrainData:
    """Every location is listed here, on the driver, so a bad one fails before training."""
    data, e = config.data, config.eval
    subset = (data.label_fraction, data.label_seed) if data.label_fraction is not None else None
    train = _read(data.path, data.source, config, data.train_subset, counter, shuffle=True, label_subset=subset)
    bank = query = None
    num_classes = len(train.classes)
    if data.val_path is not None:
        query = _read(data.val_path, data.val_source or data.source, config, e.knn_query_size)
        num_classes = max(num_classes, len(query.classes))
        if num_classes:
            # The bank: labelled training images without views (its own read; never counted).
            bank = _read(data.path, data.source, config, e.knn_bank_size)
    return PretrainData(
        train=with_views(train.dataset.select_columns(["image", "label"]), config.augment, data.channels, stage),
        knn_bank=bank.dataset.select_columns(["image", "label"]) if bank else None,
        knn_query=query.dataset.select_columns(["image", "label"]) if query else None,
        train_size=train.size,
        num_classes=num_classes,
        label_subset=list(train.kept_paths) if subset is not None else None,
    )


def check_data_locations(config: PipelineConfig) -> None:
    """List every location the run will read (cached for the run): ``DataSourceError`` with
    the URL and the cause if one is missing, empty or unreachable."""
    if config.data.source == "fashion_mnist":
        return
    for path in (config.data.path, config.data.val_path):
        if path is not None:
            files.listing(path, config.storage)


def build_pretrain_data(config: PipelineConfig, counter=None, augment_on_device: bool = False) -> PretrainData:
    """The datasets a pretraining run needs; ``counter`` (a ``SkipCounter``) hears about every
    training file that could not be decoded. ``augment_on_device``: the views leave Ray Data
    cropped but otherwise untouched (uint8); the training loop applies the rest."""
    stage = "crop" if augment_on_device else "all"
    if config.data.source == "fashion_mnist":
        return _fashion_mnist(config, stage)
    return _from_files(config, counter, stage)


@dataclass
class EvalData:
    train: ray.data.Dataset  # image, label: labelled training images (probe fit, kNN bank)
    test: ray.data.Dataset  # image, label: held-out images (what is reported)
    classes: tuple[str, ...]  # names, by label index

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def build_eval_data(config: PipelineConfig, train_size: int | None = None, test_size: int | None = None) -> EvalData:
    """The labelled images the evaluation protocols need: the training set (the first
    ``train_size``) and the test set (``data.val_path``; the first ``test_size``)."""
    data = config.data
    if data.source == "fashion_mnist":
        train = fashion_mnist.load_split(data.path, "train")
        test = fashion_mnist.load_split(data.path, "test")
        n, m = train_size or len(train.images), test_size or len(test.images)
        return EvalData(
            train=from_arrays(train.images[:n], train.labels[:n]),
            test=from_arrays(test.images[:m], test.labels[:m]),
            classes=tuple(fashion_mnist.CLASSES),
        )
    if data.val_path is None:
        raise DataSourceError("evaluation needs a labelled test set: set data.val_path")
    train = _read(data.path, data.source, config, train_size)
    test = _read(data.val_path, data.val_source or data.source, config, test_size)
    classes = train.classes if len(train.classes) >= len(test.classes) else test.classes
    if not classes:
        raise DataSourceError(
            f"{data.path}: no labels to evaluate with (one sub-folder per class, or a label column in the shards)"
        )
    return EvalData(
        train=train.dataset.select_columns(["image", "label"]),
        test=test.dataset.select_columns(["image", "label"]),
        classes=tuple(classes),
    )
