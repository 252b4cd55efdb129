"""Real services the tests start on 127.0.0.1: moto's S3 server and an MLflow tracking server."""

from __future__ import annotations

import os
import signal
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


def _serve(
    command: list[str], log: Path, ready: Callable[[], bool], env: dict | None = None, new_session: bool = False
) -> subprocess.Popen:
    """Start ``command`` and wait until ``ready()``; on failure, raise with its log's tail."""
    process = subprocess.Popen(
        command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=new_session
    )
    deadline = time.time() + 90
    while True:
        try:
            if ready():
                return process
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            stop_process_group(process) if new_session else process.kill()
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


def start_ray_head(root: Path, num_cpus: int = 2) -> tuple[subprocess.Popen, dict[str, str]]:
    """A Ray head node on 127.0.0.1 (``ray start --head --block``, no dashboard), token
    authenticated; returns the process and the environment a driver joins it with. Its workers
    hold the test S3 server's credentials (the AWS chain, as a cloud node's role gives them),
    whenever in the session it starts."""
    port = free_port()
    env = {
        **os.environ,
        "RAY_DISABLE_USAGE_STATS": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or os.urandom(16).hex(),
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.pop(name, None)
    env.pop("RAY_ADDRESS", None)
    ray = str(Path(sys.executable).with_name("ray"))
    address = f"127.0.0.1:{port}"

    def ready() -> bool:
        # A driver joined and left: ``ray status`` answers before the raylet takes drivers.
        joined = [sys.executable, "-c", "import ray; ray.init(); ray.shutdown()"]
        return (
            subprocess.run(joined, env={**env, "RAY_ADDRESS": address}, capture_output=True, timeout=60).returncode == 0
        )

    command = [
        ray,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={root}",
    ]
    # Its own session, so that stopping it (``stop_process_group``) takes the raylet, the GCS
    # and every worker they started with it.
    process = _serve(command, root / "head.log", ready, env, new_session=True)
    return process, {**env, "RAY_ADDRESS": address}


def stop_process_group(process: subprocess.Popen, grace_s: float = 0) -> None:
    """Ends ``process``'s session (started with ``new_session``): SIGTERM and up to ``grace_s``
    for it to exit, then SIGKILL to whatever of the session is left. A Ray head given SIGTERM
    drains for 30 s before it stops its processes; at the end of the tests there is nothing to
    drain, so it gets no grace."""
    signals = [signal.SIGTERM, signal.SIGKILL] if grace_s else [signal.SIGKILL]
    for sig in signals:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s or 10)
        except subprocess.TimeoutExpired:
            pass
