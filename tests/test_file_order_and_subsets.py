"""Folders and shards train as well as in-memory data: class-mixed batches whatever order the
files are listed or the shards were written in, subsets drawn by class, and k fitted to the
bank. Real PNG files of Fashion-MNIST images in class folders, read through Ray Data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from cli import joined_to_the_shared_head
from imagefiles import encode, fashion_mnist_folder, write_local
from PIL import Image

from ssl_ray.config import StorageConfig, config_from_dict
from ssl_ray.data import files
from ssl_ray.data.files import image_files, parquet_shards
from ssl_ray.data.sources import build_eval_data, build_pretrain_data
from ssl_ray.data.subsets import Selection, stratified_sample
from ssl_ray.eval.finetune import RunSizes, finetune_config
from ssl_ray.monitors.knn import k_for_bank

CLASSES = 10
PER_CLASS = 30
BATCH = 32


@pytest.fixture(scope="module")
def local_ray():
    with joined_to_the_shared_head():
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield


@pytest.fixture(scope="module")
def folders(tmp_path_factory, fashion_mnist_dir):
    """10 class folders of 30 training PNGs (listed class by class) and 10 of 10 test PNGs."""
    root = tmp_path_factory.mktemp("folders")
    train = write_local(root / "train", fashion_mnist_folder(fashion_mnist_dir, "train", PER_CLASS, CLASSES))
    test = write_local(root / "test", fashion_mnist_folder(fashion_mnist_dir, "test", 10, CLASSES))
    return train, test


@pytest.fixture(scope="module")
def sorted_shards(tmp_path_factory, fashion_mnist_dir):
    """Shards "written by others": one class per shard, rows in class order, row groups of 8."""
    from ssl_ray.data import fashion_mnist

    root = tmp_path_factory.mktemp("sorted-shards")
    split = fashion_mnist.load_split(fashion_mnist_dir, "train")
    for label in range(CLASSES):
        picks = np.flatnonzero(split.labels == label)[:PER_CLASS]
        table = pa.table(
            {
                "image": pa.array([encode(Image.fromarray(split.images[i]), "PNG") for i in picks], pa.binary()),
                "label": pa.array([label] * len(picks), pa.int64()),
            }
        )
        pq.write_table(table, root / f"part-{label:02d}.parquet", row_group_size=8)
    return root


def classes_per_batch(dataset, epochs: int = 3) -> list[int]:
    counts = []
    for _ in range(epochs):
        for batch in dataset.iter_batches(batch_size=BATCH, batch_format="numpy", drop_last=True):
            counts.append(len(np.unique(batch["label"])))
    return counts


def uniform_bound(labels: np.ndarray, batches: int, seed: int = 0) -> float:
    """The 0.1% quantile of the mean classes per batch over ``batches`` batches of a uniform
    shuffle of ``labels``: what a real shuffle stays above but for one time in a thousand."""
    rng = np.random.default_rng(seed)
    per_epoch = len(labels) // BATCH
    means = []
    for _ in range(2000):
        counts = []
        while len(counts) < batches:
            order = rng.permutation(labels)
            counts += [len(np.unique(order[i * BATCH : (i + 1) * BATCH])) for i in range(per_epoch)]
        means.append(np.mean(counts[:batches]))
    return float(np.quantile(means, 0.001))


def folder_config(train, test=None, **sections):
    raw = {
        "data": {"source": "images", "path": str(train), "channels": 1, **sections.pop("data", {})},
        "augment": {"image_size": 16},
        **sections,
    }
    if test is not None:
        raw["data"]["val_path"] = str(test)
    return config_from_dict(raw)


def test_class_sorted_folder_trains_on_batches_as_mixed_as_a_uniform_shuffle(folders, local_ray):
    train, _ = folders
    data = build_pretrain_data(folder_config(train))
    counts = classes_per_batch(data.train)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    # Cut in listing order, a 64-file block holds two or three classes and so does a batch.
    assert np.mean(counts) >= uniform_bound(labels, len(counts)), counts


def test_class_sorted_shards_written_elsewhere_train_on_mixed_batches(sorted_shards, local_ray):
    config = config_from_dict(
        {"data": {"source": "parquet", "path": str(sorted_shards), "channels": 1}, "augment": {"image_size": 16}}
    )
    data = build_pretrain_data(config)
    assert data.train_size == CLASSES * PER_CLASS
    counts = classes_per_batch(data.train)
    assert np.mean(counts) >= uniform_bound(np.repeat(np.arange(CLASSES), PER_CLASS), len(counts)), counts


def test_the_read_order_is_seeded_and_drawn_afresh_each_pass(folders, local_ray):
    train, _ = folders

    def passes(seed):
        source = image_files(str(train), StorageConfig(), 1, 16, selection=Selection(shuffle_seed=seed))
        return [[str(p) for b in source.dataset.iter_batches(batch_size=None) for p in b["path"]] for _ in range(2)]

    first, second = passes(seed=0)
    assert sorted(first) == sorted(second) and len(first) == CLASSES * PER_CLASS
    assert first != second  # a new permutation for the second epoch
    assert passes(seed=0)[0] == first  # the same seed, the same epochs
    assert passes(seed=1)[0] != first


def test_row_groups_of_one_class_too_big_to_mix_are_warned_about(tmp_path, capsys):
    image = encode(Image.fromarray(np.zeros((8, 8), np.uint8)), "PNG")
    for label in range(2):
        table = pa.table({"image": pa.array([image] * 600, pa.binary()), "label": pa.array([label] * 600)})
        pq.write_table(table, tmp_path / f"part-{label}.parquet")
    config = config_from_dict({"data": {"source": "parquet", "path": str(tmp_path), "channels": 1}})
    parquet_shards(str(tmp_path), config.data, StorageConfig(), 8, selection=Selection(shuffle_seed=0))
    warning = capsys.readouterr().err
    assert warning.startswith("ssl-ray: warning:") and "single class" in warning and warning.count("\n") == 1
    # Our own shards (random order, small groups) and listing-order reads are not warned about.
    parquet_shards(str(tmp_path), config.data, StorageConfig(), 8)
    assert capsys.readouterr().err == ""


def test_stratified_sample_keeps_each_class_in_its_share():
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    chosen = stratified_sample(labels, 100, seed=3)
    assert np.bincount(labels[chosen]).tolist() == [60, 30, 10]
    assert (chosen == stratified_sample(labels, 100, seed=3)).all() and len(np.unique(chosen)) == 100
    assert not (chosen == stratified_sample(labels, 100, seed=4)).all()
    # Shares that do not divide evenly: the largest remainders get the extra rows, the sum is exact.
    assert np.bincount(labels[stratified_sample(labels, 7, seed=0)]).tolist() == [4, 2, 1]
    unlabelled = stratified_sample(np.full(50, -1), 10, seed=0)
    assert len(unlabelled) == 10 and unlabelled.max() > 10  # a draw, not the first ten
    assert (stratified_sample(labels, None, 0) == np.arange(len(labels))).all()


def test_train_subset_is_stratified_from_every_source_kind(folders, sorted_shards, fashion_mnist_dir, local_ray):
    train, _ = folders
    subset = {"data": {"train_subset": 50}}
    sources = {
        "images": folder_config(train, **subset),
        "parquet": config_from_dict(
            {"data": {"source": "parquet", "path": str(sorted_shards), "channels": 1, "train_subset": 50}}
        ),
        "fashion_mnist": config_from_dict({"data": {"path": str(fashion_mnist_dir), "train_subset": 50}}),
    }
    for kind, config in sources.items():
        data = build_pretrain_data(config)
        assert data.train_size == 50, kind
        labels = np.concatenate([b["label"] for b in data.train.iter_batches(batch_size=None, batch_format="numpy")])
        assert np.bincount(labels, minlength=10).tolist() == [5] * 10, kind


def test_knn_bank_and_queries_are_stratified(folders, local_ray):
    train, test = folders
    config = folder_config(train, test, eval={"knn_bank_size": 50, "knn_query_size": 20})
    data = build_pretrain_data(config)
    for dataset, each in ((data.knn_bank, 5), (data.knn_query, 2)):
        labels = np.concatenate([b["label"] for b in dataset.iter_batches(batch_size=None, batch_format="numpy")])
        assert np.bincount(labels, minlength=10).tolist() == [each] * 10
    assert np.bincount(data.bank_labels).tolist() == [5] * 10


def test_evaluate_sizes_are_stratified_and_seeded(folders, local_ray):
    train, test = folders
    config = folder_config(train, test)

    def drawn(seed):
        data = build_eval_data(config, train_size=40, test_size=30, seed=seed)
        return [
            np.concatenate([b["image"] for b in d.iter_batches(batch_size=None, batch_format="numpy")])
            for d in (data.train, data.test)
        ], data

    (bank, queries), data = drawn(seed=0)
    assert data.train_count == CLASSES * PER_CLASS
    for dataset, each in ((data.train, 4), (data.test, 3)):
        labels = np.concatenate([b["label"] for b in dataset.iter_batches(batch_size=None, batch_format="numpy")])
        assert np.bincount(labels, minlength=10).tolist() == [each] * 10
    (other_bank, _), _ = drawn(seed=1)
    assert sorted(map(bytes, bank)) != sorted(map(bytes, other_bank))


def test_few_label_share_comes_from_a_stratified_pool(folders, sorted_shards, local_ray):
    train, _ = folders
    pretraining = folder_config(train)
    tuned = finetune_config(pretraining, 0.1, RunSizes(train_size=100, pool_size=CLASSES * PER_CLASS))
    data = build_pretrain_data(tuned)
    assert data.train_size == 10 and len(data.label_subset) == 10
    assert sorted({path.split("/")[-2] for path in data.label_subset}) == sorted(p.name for p in train.iterdir())
    assert tuned.train.batch_size <= 5  # sized to the ten labelled images, not to 60,000
    # Shards take a label share too, named by shard and row.
    shards = config_from_dict(
        {"data": {"source": "parquet", "path": str(sorted_shards), "channels": 1, "label_fraction": 0.1}}
    )
    data = build_pretrain_data(shards)
    assert data.train_size == 30 and all(" row " in name for name in data.label_subset)
    labels = np.concatenate([b["label"] for b in data.train.iter_batches(batch_size=None, batch_format="numpy")])
    assert np.bincount(labels).tolist() == [3] * 10


def test_k_is_fitted_to_the_banks_smallest_class():
    labels = np.repeat([0, 1, 2], [300, 144, 500])
    assert k_for_bank(200, labels) == 144
    assert k_for_bank(20, labels) == 20
    assert k_for_bank(200, np.full(10, -1)) == 200  # no labels: nothing to fit


def test_listing_check_is_cached_per_location(folders, local_ray):
    train, _ = folders
    assert files.image_index(str(train), StorageConfig()) is files.image_index(str(train), StorageConfig())


def test_held_out_labels_name_the_training_sets_classes(folders, tmp_path, fashion_mnist_dir, local_ray):
    """A validation folder with only some of the classes (and so another sort order) gets the
    training set's indices for them, by name."""
    train, _ = folders
    everything = fashion_mnist_folder(fashion_mnist_dir, "test", 4, CLASSES)
    names = sorted({name.split("/")[0] for name in everything})
    kept = {names[3], names[7], names[9]}
    val = write_local(tmp_path / "val", {k: v for k, v in everything.items() if k.split("/")[0] in kept})
    data = build_pretrain_data(folder_config(train, val))
    labels = np.concatenate([b["label"] for b in data.knn_query.iter_batches(batch_size=None, batch_format="numpy")])
    assert sorted(set(labels.tolist())) == [3, 7, 9] and data.num_classes == CLASSES


def test_every_source_numbers_its_training_rows_for_a_per_image_memory(
    folders, sorted_shards, fashion_mnist_dir, local_ray
):
    """A method with a per-image memory (PIRL's bank) gets each row's ``sample_index``: one
    pass is a permutation of 0..n-1, an index names the same image in every pass (its label
    is the same), and the memory is sized by the data before any worker starts."""
    from ssl_ray.data import fashion_mnist
    from ssl_ray.train.trainer import _sized_by_the_data

    train, _ = folders
    pirl = {"method": {"name": "pirl"}, "augment": {"global_crops": 1, "image_size": 30}}
    sources = {
        "images": folder_config(train, data={"train_subset": 120}, **pirl),
        "parquet": config_from_dict(
            {"data": {"source": "parquet", "path": str(sorted_shards), "channels": 1, "train_subset": 120}, **pirl}
        ),
        "fashion_mnist": config_from_dict({"data": {"path": str(fashion_mnist_dir), "train_subset": 120}, **pirl}),
    }
    for kind, config in sources.items():
        data = build_pretrain_data(config)
        assert _sized_by_the_data(config, data).method.num_samples == data.train_size == 120, kind
        passes = []
        for _ in range(2):
            rows = list(data.train.iter_batches(batch_size=None, batch_format="numpy"))
            index = np.concatenate([r["sample_index"] for r in rows])
            labels = np.concatenate([r["label"] for r in rows])
            assert sorted(index.tolist()) == list(range(120)), kind
            passes.append(dict(zip(index.tolist(), labels.tolist())))
        assert passes[0] == passes[1], kind  # the same image under the same index
        assert list(passes[0]) != sorted(passes[0]), kind  # in a shuffled order
        if kind == "fashion_mnist":
            split = fashion_mnist.load_split(fashion_mnist_dir, "train")
            kept = Selection(size=120, seed=config.train.seed).rows(split.labels, str(fashion_mnist_dir))
            assert [passes[0][i] for i in range(120)] == split.labels[kept].tolist()
