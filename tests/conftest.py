"""Real services for the tests, on 127.0.0.1: an ``mlflow server`` (SQLite) and an S3 HTTP
server (moto's server mode), reached through boto3 and pyarrow exactly as AWS would be."""

from __future__ import annotations

import os
import sys
import types
import uuid
from pathlib import Path

import pytest
from services import S3_KEY_ID, S3_SECRET, start_mlflow, start_moto

# One Ray token for the session, in the environment before anything imports Ray (which reads
# RAY_AUTH_MODE once, at import): the shared head, the CLI runs that join it and the tests
# that join it in-process all present it.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", uuid.uuid4().hex)

_session_exit: dict[str, int] = {}


def pytest_sessionfinish(session, exitstatus):
    _session_exit["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Ends the tests' process with pytest's own exit status once pytest is done, without the
    interpreter's teardown. This process hosts Ray drivers (the in-process runs), torch's and
    pyarrow's native thread pools; in two full runs of the last five the interpreter's teardown
    then crashed with SIGSEGV after every test had passed (exit 139 in CI, a native thread
    calling into a finalising interpreter, as in ray-project/ray#47864), which failed the run
    for nothing the tests check. The shared Ray head is stopped first, as at exit."""
    if "status" not in _session_exit:
        return  # a usage error before the session: pytest exits on its own
    from cli import stop_shared_ray_head

    stop_shared_ray_head()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_session_exit["status"])


# Fixtures that start or use the session's services (and so a Ray head in this process).
SERVICE_FIXTURES = {"mlflow_server", "s3_server", "s3", "simclr_pretrained", "local_ray"}


def _uses_ray(item: pytest.Item) -> bool:
    """A test that starts Ray or the services: its module imports ray or the CLI/services
    helpers, or it takes a service fixture."""
    if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    for value in vars(item.module).values():
        if isinstance(value, types.ModuleType) and value.__name__.split(".")[0] == "ray":
            return True
        if getattr(value, "__module__", None) in {"cli", "services"}:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    """Under ``-n 2 --dist loadgroup`` (scripts/test.sh) the tests that run Ray or the services
    form one group, run in order by one worker, first, with its one Ray head and servers, while
    the other worker takes the in-process tests: the Ray runs leave about a third of the two
    cores idle (process starts, waits on Ray and the servers), which the unit tests fill. Without
    xdist the mark is inert and the order is the same but for the group coming first."""
    ray_items = [item for item in items if _uses_ray(item)]
    for item in ray_items:
        item.add_marker(pytest.mark.xdist_group("ray"))
    chosen = set(map(id, ray_items))
    items[:] = ray_items + [item for item in items if id(item) not in chosen]


FASHION_MNIST = Path(os.environ.get("SSL_RAY_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server with a SQLite backend and a local artifact root."""
    process, uri = start_mlflow(tmp_path_factory.mktemp("mlflow-server"))
    yield uri
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    if (
        not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists()
        and not (FASHION_MNIST / "train-images-idx3-ubyte").exists()
    ):
        pytest.skip(
            f"Fashion-MNIST not found at {FASHION_MNIST}; install dataset-fashion-mnist or set SSL_RAY_FASHION_MNIST"
        )
    return FASHION_MNIST


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """An S3-compatible HTTP server on 127.0.0.1; the session's AWS credentials point at it
    through the standard environment variables (the AWS chain), never through a config."""
    root = tmp_path_factory.mktemp("s3-server")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
        patch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        process, endpoint = start_moto(root, "moto")
        yield endpoint
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def s3(s3_server):
    """A boto3 client of the test server and a fresh bucket name per test."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


# What a GPU run does by default, exercised here on CPU workers: weights and images in
# channels_last, and the colour part of the views made in the training loop.
GPU_DEFAULTS = ["train.memory_format=channels_last", "augment.on=device"]


@pytest.fixture(scope="session")
def simclr_pretrained(tmp_path_factory, s3_server, mlflow_server, fashion_mnist_dir):
    """One short SimCLR pretraining through the ``ssl-ray`` CLI that several modules inspect,
    so the suite pays for it once: 2 DDP workers on 2,048 Fashion-MNIST images, one epoch, the
    GPU defaults on CPU, per-step metrics, both kNN baselines, the end-of-run linear probe, a
    registered encoder, and checkpoints in the S3 server's bucket. test_pretrain_e2e checks
    what the run wrote; test_evaluate evaluates it from its run id, its registered model and
    its checkpoint."""
    import boto3
    from cli import SMALL_RUN, pipeline, run_cli

    tmp = tmp_path_factory.mktemp("simclr-pretrained")
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    done = run_cli(
        "pretrain",
        pipeline("simclr_fashion_mnist"),
        *SMALL_RUN,
        *GPU_DEFAULTS,
        "train.epochs=1",
        "data.train_subset=2048",
        "train.log_every_steps=1",
        "train.run_name=e2e",
        "tracking.experiment=e2e",
        "tracking.registered_model=e2e-encoder",
        f"train.storage_path=s3://{bucket}/runs",
        f"storage.endpoint_url={s3_server}",
        "eval.knn_bank_size=1000",
        "eval.knn_query_size=500",
        "eval.linear_probe_at_end=true",
        "--tracking-uri",
        mlflow_server,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {"done": done, "tmp": tmp, "bucket": bucket, "s3": s3_server, "experiment": "e2e"}
