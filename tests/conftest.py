"""Real services for the tests, on 127.0.0.1: an ``mlflow server`` (SQLite) and an S3 HTTP
server (moto's server mode), reached through boto3 and pyarrow exactly as AWS would be."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from services import S3_KEY_ID, S3_SECRET, start_mlflow, start_moto

# One Ray token for the session, in the environment before anything imports Ray (which reads
# RAY_AUTH_MODE once, at import): the shared head, the CLI runs that join it and the tests
# that join it in-process all present it.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", uuid.uuid4().hex)

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
