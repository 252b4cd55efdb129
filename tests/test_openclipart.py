"""OpenClipart as the second real dataset: the categories kept for labelled evaluation, the
stratified seeded split, drawings fitted whole on white, and ``prepare`` writing both sets
locally and into the S3 server from Debian's real drawings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from cli import joined_to_the_shared_head, run_cli
from imagefiles import bad_files, openclipart_folders
from PIL import Image

from ssl_ray.config import StorageConfig, config_from_dict
from ssl_ray.data.files import parquet_shards
from ssl_ray.data.openclipart import SYSTEM_ROOT, choose_categories, fit_on_white, stratified_split
from ssl_ray.data.prepare import PrepareOptions, prepare

# Each top folder's drawings in openclipart-png 1:0.18+dfsg-19, counted with find.
PACKAGE_COUNTS = {
    "animals": 316, "buildings": 70, "buttons": 3, "computer": 2158, "containers": 16, "decorations": 26,
    "education": 54, "electronics": 43, "food": 366, "geography": 135, "logos": 7, "office": 142,
    "people": 400, "plants": 95, "recreation": 614, "science": 21, "shapes": 1645,
    "signs_and_symbols": 1113, "special": 225, "tools": 149, "transportation": 369, "unsorted": 154,
}  # fmt: skip


def test_the_kept_categories_are_the_large_ones_that_name_one_kind_of_thing():
    kept, dropped = choose_categories(PACKAGE_COUNTS)
    assert kept == (
        "animals", "computer", "food", "geography", "office", "people", "plants", "recreation", "shapes",
        "signs_and_symbols", "tools", "transportation",
    )  # fmt: skip
    assert sum(PACKAGE_COUNTS[name] for name in kept) == 7502
    assert set(dropped) == set(PACKAGE_COUNTS) - set(kept)
    assert dropped["special"] == "a catch-all folder of 225 drawings, not one kind of thing"
    assert dropped["unsorted"].startswith("a catch-all folder")
    assert dropped["buildings"] == "70 drawings, fewer than 90"


def test_the_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(3), [100, 11, 2])
    train, test = stratified_split(labels, 0.2, seed=5)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    assert np.bincount(labels[test]).tolist() == [20, 2, 1]  # round(0.2 n); a pair still gives one each side
    again, other = stratified_split(labels, 0.2, seed=5), stratified_split(labels, 0.2, seed=6)
    assert np.array_equal(again[1], test) and not np.array_equal(other[1], test)
    with pytest.raises(ValueError, match="strictly between"):
        stratified_split(labels, 1.0, seed=0)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_drawing_is_fitted_whole_on_white():
    # A wide opaque red bar on a transparent canvas, 200 x 100: scaled to 64 x 32, centred.
    drawing = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    drawing.paste((255, 0, 0, 255), (0, 0, 200, 100))
    drawing.paste((0, 0, 0, 0), (0, 0, 200, 10))  # a transparent band along the top
    fitted = np.asarray(Image.open(io.BytesIO(fit_on_white(_png(drawing), 64))))
    assert fitted.shape == (64, 64, 3)
    assert (fitted[:16] == 255).all() and (fitted[48:] == 255).all()  # white above and below
    assert (fitted[17 : 16 + 3, :] == 255).all()  # the transparent band: white, not black
    assert (fitted[30:46, 1:63] == (255, 0, 0)).all()  # the bar, its whole width kept
    # A gray drawing with alpha (LA, as many of the package's are) comes out RGB.
    gray = Image.new("LA", (50, 120), (0, 255))
    assert np.asarray(Image.open(io.BytesIO(fit_on_white(_png(gray), 32)))).shape == (32, 32, 3)
    assert fit_on_white(b"", 64) == "empty" and fit_on_white(b"not an image at all", 64) == "not_an_image"


needs_package = pytest.mark.skipif(
    not Path(SYSTEM_ROOT, "plants").is_dir(), reason="needs Debian's openclipart-png (scripts/setup.sh --openclipart)"
)


@pytest.fixture(scope="module")
def drawings(tmp_path_factory) -> Path:
    """Four of the package's folders, its real drawings linked: plants (95) and geography
    (135) kept, buttons (3, too few) and 40 of special's (a catch-all) dropped; and two bad
    files in plants, skipped and counted."""
    root = openclipart_folders(
        tmp_path_factory.mktemp("openclipart"), {"plants": None, "geography": None, "buttons": None, "special": 40}
    )
    for name, raw in list(bad_files().items())[:2]:
        (root / "plants" / f"bad-{name}").write_bytes(raw)
    return root


@pytest.fixture(scope="module")
def local_ray():
    with joined_to_the_shared_head():
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield


def _shard_paths(folder: Path) -> list[str]:
    return [path for shard in sorted(folder.glob("*.parquet")) for path in pq.read_table(shard)["path"].to_pylist()]


@needs_package
def test_prepare_writes_a_stratified_split_of_the_kept_categories(drawings, tmp_path, local_ray, s3, s3_server):
    manifests = prepare(str(drawings), str(tmp_path / "shards"), PrepareOptions(source="openclipart", size=32))
    train, test = manifests["train"], manifests["test"]
    split = train["split"]
    assert split == {**test["split"], "side": "train", "per_class": split["per_class"]}
    assert split["categories_kept"] == ["geography", "plants"] and set(split["categories_dropped"]) == {
        "buttons",
        "special",
    }
    assert train["classes"] == test["classes"] == ["geography", "plants"]
    # round(0.2 n) of each category's listed files (plants: 95 drawings and the 2 bad files)
    # to the test side; what does not decode is left out where it fell, and counted.
    assert split["listed"] == {"train": 108 + 78, "test": 27 + 19}
    assert test["split"]["per_class"] == {"geography": 27, "plants": 19}
    assert split["per_class"] == {"geography": 108, "plants": 76}
    assert train["skipped"] == {"empty": 1, "not_an_image": 1} and test["skipped"] == {}
    assert train["images"] + test["images"] == 135 + 95
    stored = json.loads((tmp_path / "shards" / "test" / "manifest.json").read_text())
    assert stored == test

    storage = StorageConfig()
    sets = {}
    for side in ("train", "test"):
        config = config_from_dict(
            {"data": {"source": "parquet", "path": str(tmp_path / "shards" / side), "channels": 3}}
        )
        sets[side] = parquet_shards(config.data.path, config.data, storage, size=32)
    assert sets["train"].size == train["images"] and sets["test"].size == test["images"]
    assert np.bincount(sets["test"].labels).tolist() == list(test["split"]["per_class"].values())
    train_paths, test_paths = (_shard_paths(tmp_path / "shards" / side) for side in ("train", "test"))
    assert len(set(train_paths)) == len(train_paths) == train["images"]
    assert not set(train_paths) & set(test_paths), "no drawing on both sides"
    images = np.concatenate(
        [b["image"] for b in sets["test"].dataset.iter_batches(batch_size=None, batch_format="numpy")]
    )
    assert images.shape[1:] == (32, 32, 3) and (images[:, 0, 0] == 255).mean() > 0.9  # drawn on white

    # Into the bucket: the same seeded split, read back from the S3 server.
    client, bucket = s3
    remote = prepare(
        str(drawings),
        f"s3://{bucket}/openclipart",
        PrepareOptions(source="openclipart", size=32, storage=StorageConfig(endpoint_url=s3_server)),
    )
    assert remote["test"]["split"] == test["split"] and remote["train"]["images"] == train["images"]
    over_s3 = StorageConfig(endpoint_url=s3_server)
    config = config_from_dict({"data": {"source": "parquet", "path": f"s3://{bucket}/openclipart/test", "channels": 3}})
    from_bucket = parquet_shards(config.data.path, config.data, over_s3, size=32)
    assert np.array_equal(np.sort(from_bucket.labels), np.sort(sets["test"].labels))
    (key,) = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=bucket, Prefix="openclipart/test/")["Contents"]
        if o["Key"].endswith(".parquet")
    ]
    shard = pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
    assert sorted(shard["path"].to_pylist()) == sorted(test_paths)


def test_prepare_options_of_openclipart_are_refused_elsewhere(tmp_path):
    done = run_cli("prepare", str(tmp_path), str(tmp_path / "out"), "--size", "32", timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == "ssl-ray: --size: for --source openclipart only"
    done = run_cli("prepare", str(tmp_path), str(tmp_path / "out"), "--source", "openclipart", "--test-share", "1.5")
    assert done.returncode == 2 and "--test-share 1.5: a share strictly between 0 and 1" in done.stderr
