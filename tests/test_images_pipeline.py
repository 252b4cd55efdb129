"""``pipelines/simclr_images.yaml`` on a folder of class sub-folders, through the command line:
sizes counted after decoding (a batch too big for what decodes is refused up front, an epoch
that comes out short re-aims the schedule), and kNN's k fitted to the bank."""

from __future__ import annotations

import math
import re

import numpy as np
from cli import pipeline, run_cli
from imagefiles import bad_files, encode, fashion_mnist_folder, write_local
from mlflow.tracking import MlflowClient
from PIL import Image

from ssl_ray.nn.schedules import warmup_cosine

TINY = [
    "model.width=8",
    "model.blocks=[1,1,1,1]",
    "data.decode_size=20",
    "augment.image_size=16",
    "train.threads_per_worker=1",
    "eval.knn_at_init=false",
    "eval.knn_raw_pixels=false",
    "eval.linear_probe_at_end=false",
]


# What Ray prints on its own during a run (training report dumps, an actor's constructor
# error, a deprecation warning, Ray Data's notice, the token notice) and MLflow's notices.
RAY_INTERNAL_LINES = (
    "TrainingReport(",
    "PreemptionWatcher",
    "RayDeprecationWarning",
    "Progress bars disabled",
    "Token authentication",
    "Successfully registered model",
    "Creating initial MLflow database tables",
)


def big_truncated_png(seed: int) -> bytes:
    """A file larger than the listing's check reads, whose header is fine and data cut."""
    noise = np.random.default_rng(seed).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    whole = encode(Image.fromarray(noise), "PNG", compress_level=0)
    return whole[: len(whole) // 2]


def test_images_pipeline_counts_what_decodes_and_fits_k(tmp_path, fashion_mnist_dir):
    train_files = fashion_mnist_folder(fashion_mnist_dir, "train", per_class=42, classes=3)
    train_files.update({f"coat/bad-{name}": raw for name, raw in bad_files().items()})  # left out up front
    train_files.update({f"trouser/big-cut-{i}.png": big_truncated_png(i) for i in range(2)})  # found when read
    train = write_local(tmp_path / "train", train_files)
    val = write_local(tmp_path / "val", fashion_mnist_folder(fashion_mnist_dir, "test", per_class=10, classes=3))
    common = [pipeline("simclr_images"), f"data.path={train}", f"data.val_path={val}", *TINY]

    # 126 good images + 2 that only a full decode finds bad: 128 pass the check.
    refused = run_cli("pretrain", *common, "train.batch_size=129", "--verbose", cwd=tmp_path, timeout=300)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-3000:]
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("ssl-ray: train.batch_size (129) is larger than the training set at "), message
    assert "(128 decodable images)" in message and "Traceback" not in refused.stderr
    assert "5 files are left out (1 empty, 2 not_an_image, 2 truncated)" in refused.stderr
    assert "Progress bars disabled" in refused.stderr  # --verbose: Ray's own lines too

    # eval.knn_k=200 against 42 images per class in the bank: clipped, and said so.
    done = run_cli(
        "pretrain",
        *common,
        "train.batch_size=64",
        "train.epochs=2",
        "optim.warmup_epochs=0",
        "eval.knn_k=200",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    console = done.stdout + done.stderr
    # A quiet console by default: Ray's internal lines stay in its log files.
    for internal in RAY_INTERNAL_LINES:
        assert internal not in console, internal
    # Planned 128 // 64 = 2 steps an epoch; the first epoch found 126 images: 1 full batch.
    assert "epoch 1 gave 1 full batches where 2 were counted" in console, console[-3000:]
    assert "the schedule now ends at step 2" in console
    assert "ssl-ray: warning: eval.knn_k 200 is more than the kNN bank's smallest class: using k=42" in done.stderr
    assert "(k=42)" in done.stdout
    run_id = re.search(r"MLflow run id:\s+(\w+)", done.stdout).group(1)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    lr = [m.value for m in sorted(client.get_metric_history(run_id, "lr"), key=lambda m: m.step)]
    peak = 0.6 * 64 / 256
    # Epoch 2's step is the last of a 2-step schedule (not the second of the 4 first counted).
    assert math.isclose(lr[-1], warmup_cosine(1, 2, 0, peak), rel_tol=1e-6), lr
    metrics = client.get_run(run_id).data.metrics
    # The queries' labels name the same classes as the bank's (the bank has a "coat" folder of
    # bad files only: no class), so kNN is well above the 1-in-3 chance even this early.
    assert metrics["knn_top1"] > 0.5, metrics["knn_top1"]
    # Every epoch goes without the 3 files left out up front and the 2 found when read.
    assert metrics["skipped_truncated"] == 4 and metrics["skipped_not_an_image"] == 2 and metrics["skipped_empty"] == 1


def test_prepare_takes_the_endpoint_as_every_command_does(tmp_path):
    done = run_cli("prepare", str(tmp_path), str(tmp_path / "out"), "--endpoint-url", "http://127.0.0.1:9", timeout=60)
    assert done.returncode == 2
    assert "--endpoint-url is spelled storage.endpoint_url=VALUE in every command" in done.stderr
    bad = run_cli("prepare", str(tmp_path), str(tmp_path / "out"), "train.epochs=3", timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "ssl-ray: train: this command takes only storage.* settings (storage.endpoint_url, storage.region)"
    )
