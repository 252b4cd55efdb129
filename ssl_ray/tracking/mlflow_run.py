"""MLflow runs for pretraining: creation, lookup on resume, params, metrics, artifacts.

Everything goes through an explicit ``MlflowClient`` and run id (no global active run), so the
same code works in the driver and in a Ray Train worker process.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:  # the config's module imports every method; Ray Train's controller, which
    # runs the epoch logger (tracking/epoch_log.py), needs none of them
    from ssl_ray.config import PipelineConfig

RUN_NAME_TAG = "ssl_ray.run_name"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
DEFAULT_DB = "mlflow.db"
RUN_ID = re.compile(r"[0-9a-f]{32}")  # how MLflow names a run


def resolve_tracking_uri(configured: str | None) -> str:
    """Config value, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the working directory.
    Local paths become absolute so Ray worker processes (other cwd) write to the same store."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    elif "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    return uri


@contextlib.contextmanager
def mlflow_tracking_uri(uri: str):
    """MLflow's global tracking URI set to ``uri`` for the APIs that only read the global one
    (``log_model``, ``load_model("models:/...")``), then put back. MLflow also exports it as
    ``MLFLOW_TRACKING_URI``, which every process started afterwards would inherit: that is put
    back too."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def ui_command(tracking_uri: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """How to see a run: the UI server to start (for a local store) and the run's page."""
    page = f"/#/experiments/{experiment_id}/runs/{run_id}" if experiment_id and run_id else ""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri.rstrip('/')}{page}"
    return (
        f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
        f"  then open http://127.0.0.1:5000{page}"
    )


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it on first use."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


class RunTracker:
    """One MLflow run, addressed by id."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        config: PipelineConfig,
        ray_run_name: str,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> RunTracker:
        """A run with every config field as a param; ``parent_run_id`` nests it (a sweep's trial)."""
        client = MlflowClient(tracking_uri)
        run = client.create_run(
            experiment_id(client, config.tracking.experiment),
            run_name=ray_run_name,
            tags={
                RUN_NAME_TAG: ray_run_name,
                "ssl_ray.method": config.method.name,
                **({PARENT_TAG: parent_run_id} if parent_run_id else {}),
                **(tags or {}),
            },
        )
        tracker = cls(tracking_uri, run.info.run_id)
        tracker.log_params({key: str(value) for key, value in config.flat().items()})
        return tracker

    def log_params(self, params: dict[str, str]) -> None:
        batch = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(batch), 100):  # MLflow's limit per call
            self.client.log_batch(self.run_id, params=batch[start : start + 100])

    @classmethod
    def find(cls, tracking_uri: str, experiment_name: str, ray_run_name: str) -> RunTracker | None:
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            return None
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{ray_run_name}'", max_results=1
        )
        return cls(tracking_uri, runs[0].info.run_id) if runs else None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()]
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` pairs in step order."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(self.run_id, key))

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def set_running(self) -> None:
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
