"""Object storage through a real S3 HTTP server (moto's server mode on 127.0.0.1), reached by
boto3 (to set up) and pyarrow's S3FileSystem inside Ray Data (to read and write), exactly as
AWS would be. Local folders go through the same code."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from cli import ONE_WORKER, SMALL_RUN, joined_to_the_shared_head, pipeline, run_cli
from imagefiles import BAD_FILES, bad_files, encode, fashion_mnist_folder, odd_mode_files, upload, write_local
from mlflow.tracking import MlflowClient
from PIL import Image
from services import S3_KEY_ID, S3_SECRET, start_moto

import ssl_ray.data.files as files_module
from ssl_ray.cli import main
from ssl_ray.config import StorageConfig, config_from_dict
from ssl_ray.data.decode import PROBE_BYTES
from ssl_ray.data.errors import DataSourceError
from ssl_ray.data.files import image_files, listing, parquet_shards
from ssl_ray.data.objectstore import list_files
from ssl_ray.data.prepare import PrepareOptions, prepare
from ssl_ray.data.skips import SkipCounter
from ssl_ray.data.subsets import Selection


@pytest.fixture(scope="module")
def local_ray(s3_server):
    """The suite's Ray head, joined in-process (its workers hold the S3 server's credentials)."""
    with joined_to_the_shared_head():
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield


def rows(dataset) -> dict[str, np.ndarray]:
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]} if batches else {}


def folder_with_everything(fashion_mnist_dir) -> dict[str, bytes]:
    """3 classes x 8 real images, 6 odd-mode images (converted), 5 bad files (skipped)."""
    files = fashion_mnist_folder(fashion_mnist_dir, "train", per_class=8)
    files.update({f"trouser/odd-{name}": raw for name, raw in odd_mode_files().items()})
    files.update({f"pullover/bad-{name}": raw for name, raw in bad_files().items()})
    return files


def expected_skips() -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in BAD_FILES.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


@pytest.mark.parametrize("where", ["s3", "local"])
def test_image_folder_is_read_labelled_converted_and_bad_files_counted(
    where, s3, s3_server, tmp_path, fashion_mnist_dir, local_ray
):
    files = folder_with_everything(fashion_mnist_dir)
    if where == "s3":
        client, bucket = s3
        url = upload(client, bucket, "raw/train", files)
    else:
        url = str(write_local(tmp_path / "train", files))
    storage = StorageConfig(endpoint_url=s3_server)
    counter = SkipCounter.remote()
    source = image_files(url, storage, channels=3, size=20, counter=counter)
    # The listing's check reads each small file whole (a tiny decode) and so leaves out all
    # five bad files before any epoch: the size is what decodes, not what is listed.
    good = len(files) - len(BAD_FILES)
    assert source.size == good
    assert source.skipped == expected_skips()
    assert source.classes == ("pullover", "t-shirt-top", "trouser")
    out = rows(source.dataset)
    assert out["image"].shape == (good, 20, 20, 3) and out["image"].dtype == np.uint8
    # Labels follow the folders: 8 pullovers, 8 t-shirts, 8 + 6 odd-mode trousers.
    assert np.bincount(out["label"], minlength=3).tolist() == [8, 8, 14]
    summary = ray.get(counter.summary.remote())
    assert summary["kept"] == good and summary["skipped"] == {}


def test_large_files_get_a_header_check_and_the_rest_is_skipped_when_met(tmp_path, local_ray):
    """Past PROBE_BYTES only the header is read: a large file truncated after a good header
    passes the listing's check, and the full decode finds it and counts it when it is met."""
    noise = np.random.default_rng(0).integers(0, 256, (320, 320, 3), dtype=np.uint8)
    big = encode(Image.fromarray(noise), "PNG", compress_level=0)
    assert len(big) > 4 * PROBE_BYTES
    files = {**bad_files(), "big.png": big, "big-truncated.png": big[: len(big) // 2]}
    root = write_local(tmp_path / "big", files)
    counter = SkipCounter.remote()
    source = image_files(str(root), StorageConfig(), channels=3, size=16, counter=counter)
    assert source.skipped == expected_skips()  # the small bad files, each read whole
    assert source.size == 2
    assert len(rows(source.dataset)["image"]) == 1
    assert ray.get(counter.summary.remote())["skipped"] == {"truncated": 1}


def test_a_file_gone_after_listing_is_counted_unreadable(tmp_path, fashion_mnist_dir, local_ray):
    root = write_local(tmp_path / "train", fashion_mnist_folder(fashion_mnist_dir, "train", per_class=4))
    counter = SkipCounter.remote()
    source = image_files(str(root), StorageConfig(), channels=1, size=16, counter=counter)
    gone = sorted(root.rglob("*.png"))[0]
    gone.unlink()  # deleted between the listing and the read, as in a live bucket
    assert len(rows(source.dataset)["image"]) == source.size - 1
    summary = ray.get(counter.summary.remote())
    assert summary["skipped"] == {"unreadable": 1}
    assert summary["examples"]["unreadable"] == [str(gone)]


def test_prepare_into_the_bucket_then_read_the_shards(s3, s3_server, tmp_path, fashion_mnist_dir, local_ray):
    client, bucket = s3
    source = str(write_local(tmp_path / "images", folder_with_everything(fashion_mnist_dir)))
    storage = StorageConfig(endpoint_url=s3_server)
    # A tiny shard size, so the 30 images land in several shards.
    manifest = prepare(source, f"s3://{bucket}/shards", PrepareOptions(shard_mb=0.02, storage=storage))
    stored = json.loads(client.get_object(Bucket=bucket, Key="shards/manifest.json")["Body"].read())
    assert stored == manifest
    assert manifest["images"] == 30 and manifest["classes"] == ["pullover", "t-shirt-top", "trouser"]
    assert manifest["skipped"] == expected_skips()
    assert manifest["shards"] >= 2
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="shards/")["Contents"]]
    shard_keys = [k for k in keys if k.endswith(".parquet")]
    assert len(shard_keys) == manifest["shards"]
    assert manifest["bytes"] == sum(client.head_object(Bucket=bucket, Key=k)["ContentLength"] for k in shard_keys)

    config = config_from_dict({"data": {"source": "parquet", "path": f"s3://{bucket}/shards", "channels": 1}})
    shards = parquet_shards(config.data.path, config.data, storage, size=16)
    assert shards.size == 30 and shards.classes == ("pullover", "t-shirt-top", "trouser")
    out = rows(shards.dataset)
    assert out["image"].shape == (30, 16, 16)
    assert np.bincount(out["label"], minlength=3).tolist() == [8, 8, 14]
    # The files were listed class by class; prepare writes them in a seeded random order, so
    # no shard is a single class (which would make every training batch one class).
    for key in shard_keys:
        labels = (
            pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
            .column("label")
            .to_pylist()
        )
        assert len(labels) < 3 or len(set(labels)) > 1, (key, labels)
    # Read tasks hold about ROWS_PER_TASK rows in whole row groups, however small the shards
    # (the stock reader made one task for all): at one row per task, a task per row group.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files_module, "ROWS_PER_TASK", 1)
        each = parquet_shards(config.data.path, config.data, storage, size=16, selection=Selection(shuffle_seed=0))
    assert each.dataset.materialize().num_blocks() >= manifest["shards"]
    # A subset keeps the same images whatever order the row groups are read in.
    limited = parquet_shards(
        config.data.path, config.data, storage, size=16, selection=Selection(size=12, shuffle_seed=0)
    )
    first, second = rows(limited.dataset), rows(limited.dataset)
    assert limited.size == 12 and len(first["image"]) == 12
    assert sorted(map(bytes, first["image"])) == sorted(map(bytes, second["image"]))

    with pytest.raises(DataSourceError, match="already holds Parquet shards"):
        prepare(source, f"s3://{bucket}/shards", PrepareOptions(storage=storage))


def test_prepare_fashion_mnist_through_the_cli(s3, s3_server, fashion_mnist_dir):
    client, bucket = s3
    done = run_cli(
        "prepare",
        str(fashion_mnist_dir),
        f"s3://{bucket}/fm-test",
        "--source",
        "fashion_mnist",
        "--split",
        "test",
        "--shard-mb",
        "1",
        f"storage.endpoint_url={s3_server}",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^10000 images in \d+ shards", done.stdout, re.M), done.stdout
    manifest = json.loads(client.get_object(Bucket=bucket, Key="fm-test/manifest.json")["Body"].read())
    assert manifest["images"] == 10000 and len(manifest["classes"]) == 10 and manifest["skipped"] == {}
    assert manifest["shards"] >= 2


def test_fail_fast_names_the_url_and_the_cause(s3, s3_server, tmp_path_factory):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="data/a.png", Body=b"x")
    cases = [
        ("s3://no-such-bucket-here/data", s3_server, "the bucket does not exist"),
        (f"s3://{bucket}/nothing-here", s3_server, "no files under this prefix"),
        (f"s3://{bucket}/data", "http://127.0.0.1:9", "cannot reach the storage endpoint"),
    ]
    for url, endpoint, cause in cases:
        started = time.monotonic()
        with pytest.raises(DataSourceError) as error:
            list_files(url, endpoint)
        assert str(error.value) == f"{url}: {cause}" or str(error.value).startswith(f"{url}: {cause}")
        assert "\n" not in str(error.value)
        assert time.monotonic() - started < 30


def test_access_denied_is_reported_as_such(tmp_path_factory, monkeypatch):
    """A second S3 server that enforces IAM after its first three calls (moto's
    INITIAL_NO_AUTH_ACTION_COUNT): a user with no policy may not list the bucket."""
    root = tmp_path_factory.mktemp("locked-s3")
    process, endpoint = start_moto(root, "locked", {"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="locked-bucket")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        with pytest.raises(DataSourceError, match=r"^s3://locked-bucket/images: access denied"):
            list_files("s3://locked-bucket/images", endpoint)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_cli_fails_before_ray_starts_on_a_bad_bucket(s3_server, tmp_path):
    started = time.monotonic()
    done = run_cli(
        "pretrain",
        pipeline("simclr_fashion_mnist"),
        "data.source=images",
        "data.path=s3://no-such-bucket-here/train",
        f"storage.endpoint_url={s3_server}",
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "ssl-ray: s3://no-such-bucket-here/train: the bucket does not exist"
    assert not (tmp_path / "mlflow.db").exists()  # nothing started, nothing tracked
    assert time.monotonic() - started < 60


def test_listing_is_cached_per_location(s3, s3_server):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="one/a.png", Body=b"x")
    storage = StorageConfig(endpoint_url=s3_server)
    first = listing(f"s3://{bucket}/one", storage)
    client.put_object(Bucket=bucket, Key="one/b.png", Body=b"y")
    assert listing(f"s3://{bucket}/one", storage) is first  # the run sees one consistent listing
    assert len(list_files(f"s3://{bucket}/one", s3_server)) == 2


def test_pretrain_from_the_bucket_checkpoint_to_it_and_resume(
    s3, s3_server, tmp_path, mlflow_server, fashion_mnist_dir, local_ray, capsys, monkeypatch
):
    """The whole path against the S3 server: loose images (with bad files) to train on,
    Parquet shards written by ``prepare`` as the kNN queries, checkpoints into the bucket,
    resume from them, skip counts in MLflow, and no credential anywhere MLflow keeps. Both
    runs go through the command's ``main`` in this process, joined to the head (the command
    as its own process, with a bucket checkpoint, is the suite's SimCLR run: conftest.py)."""
    client, bucket = s3
    train_files = fashion_mnist_folder(fashion_mnist_dir, "train", per_class=120, classes=5)
    train_files.update({f"coat/bad-{name}": raw for name, raw in bad_files().items()})
    train_url = upload(client, bucket, "train", train_files)
    val = write_local(tmp_path / "val", fashion_mnist_folder(fashion_mnist_dir, "test", per_class=60, classes=5))
    # Written in this process, joined to the head (the command's own path into the bucket is
    # test_prepare_fashion_mnist_through_the_cli's): a CLI start less.
    prepare(str(val), f"s3://{bucket}/val-shards", PrepareOptions(storage=StorageConfig(endpoint_url=s3_server)))

    monkeypatch.chdir(tmp_path)

    def pretrain(*extra):
        code = main(
            [
                "pretrain",
                pipeline("simclr_fashion_mnist"),
                *SMALL_RUN,
                *ONE_WORKER,
                "data.source=images",
                f"data.path={train_url}",
                f"data.val_path=s3://{bucket}/val-shards",
                "data.val_source=parquet",
                f"storage.endpoint_url={s3_server}",
                f"train.storage_path=s3://{bucket}/runs",
                "train.run_name=s3-e2e",
                "tracking.experiment=s3-e2e",
                # Each kNN pass re-reads the loose files from the server; the baselines would add four.
                "eval.knn_at_init=false",
                "eval.knn_raw_pixels=false",
                # No MLflow model: its encoder stays the run's encoder/encoder.pt (checked below).
                "tracking.register_model=false",
                "--tracking-uri",
                mlflow_server,
                *extra,
            ]
        )
        done = capsys.readouterr()
        assert code == 0, done.out[-3000:] + done.err[-5000:]
        return done

    first = pretrain("train.epochs=1")
    run_id = re.search(r"MLflow run id:\s+(\w+)", first.out).group(1)
    assert re.search(rf"checkpoint: s3://{bucket}/runs/s3-e2e-", first.out), first.out
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="runs/")["Contents"]]
    assert any(k.endswith("/state.pt") for k in keys), keys

    second = pretrain("train.epochs=2", "--resume")
    assert re.search(r"MLflow run id:\s+(\w+)", second.out).group(1) == run_id
    mlflow = MlflowClient(mlflow_server)
    run = mlflow.get_run(run_id)
    assert sorted(m.step for m in mlflow.get_metric_history(run_id, "loss")) == [1, 2]
    # 600 good images + 5 bad files: every epoch skips the same five, each for its reason.
    for reason, count in expected_skips().items():
        assert [m.value for m in mlflow.get_metric_history(run_id, f"skipped_{reason}")] == [count, count], reason
    assert run.data.metrics["skipped_corrupt"] == 0
    assert 0.2 < run.data.metrics["knn_top1"] <= 1.0  # 5 classes, queries from the shards

    # Credentials never reach what MLflow stores: params, tags, metrics' names, artifacts.
    stored = json.dumps({"params": run.data.params, "tags": run.data.tags, "metrics": list(run.data.metrics)})
    artifacts = [a.path for a in mlflow.list_artifacts(run_id)]
    stored += Path(mlflow.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()
    for secret in (S3_SECRET, S3_KEY_ID):
        assert secret not in stored and secret not in first.out + first.err + second.out + second.err
    assert "config.yaml" in artifacts and run.data.params["storage.endpoint_url"] == s3_server
    assert "encoder" in artifacts and "ssl_ray.registered_model" not in run.data.tags
    assert not mlflow.search_registered_models(f"name = '{run.data.params['train.run_name']}-encoder'")
