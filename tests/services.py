"""Real services the tests start on 127.0.0.1: moto's S3 server and an MLflow tracking server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

# Credentials for the test S3 server. Distinctive, so a test can prove they never reach MLflow.
S3_KEY_ID = "SSLRAYTESTKEYID0001"
S3_SECRET = "ssl-ray-test-secret-must-never-be-logged-7f3a9c"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(command: list[str], log: Path, ready: Callable[[], bool], env: dict | None = None) -> subprocess.Popen:
    """Start ``command`` and wait until ``ready()``; on failure, raise with its log's tail."""
    process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 90
    while True:
        try:
            if ready():
                return process
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise RuntimeError(f"{command[0]} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)


def start_moto(root: Path, name: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    moto = str(Path(sys.executable).with_name("moto_server"))
    process = _serve(
        [moto, "-H", "127.0.0.1", "-p", str(port)], root / f"{name}.log", ready, {**os.environ, **(env or {})}
    )
    return process, f"http://127.0.0.1:{port}"


def start_mlflow(root: Path) -> tuple[subprocess.Popen, str]:
    """A tracking server with a SQLite backend and a local artifact root."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200

    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [
        mlflow,
        "server",
        "--backend-store-uri",
        f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    return _serve(command, root / "server.log", ready), uri
