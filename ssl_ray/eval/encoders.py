"""What ``ssl-ray evaluate SOURCE`` can name, resolved to backbone weights and the pipeline
config that built them:

- an MLflow run id (32 hex digits): the run's ``encoder/encoder.pt`` and ``config.yaml``;
- a registered model, ``models:/NAME/VERSION`` (or ``models:/NAME@ALIAS``): the logged
  feature extractor, and the config of the run that logged it;
- a checkpoint directory, local or ``s3://...``: its ``state.pt`` (digest-checked), with the
  config saved inside it (or ``--config`` for a checkpoint that has none).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ssl_ray.config import ConfigError, PipelineConfig, StorageConfig, apply_overrides, config_from_dict, load_raw
from ssl_ray.data.errors import DataSourceError
from ssl_ray.data.objectstore import describe_failure, filesystem_for
from ssl_ray.tracking.mlflow_run import RUN_ID, mlflow_tracking_uri
from ssl_ray.train.checkpoint import DIGEST_FILE, STATE_FILE, encoder_state, load_state


class SourceError(ValueError):
    pass


@dataclass
class TrainedEncoder:
    state: dict[str, torch.Tensor]  # the backbone's weights
    config: PipelineConfig
    run_id: str | None  # the pretraining's MLflow run, when there is one
    source: str  # as the user named it


def _with_overrides(raw: dict, overrides: list[str]) -> PipelineConfig:
    return config_from_dict(apply_overrides(raw, overrides))


def _run_config(client: MlflowClient, run_id: str, directory: str) -> dict:
    try:
        path = client.download_artifacts(run_id, "config.yaml", directory)
    except MlflowException as error:
        raise SourceError(f"MLflow run {run_id} has no config.yaml artifact ({error.message})") from None
    return yaml.safe_load(Path(path).read_text())


def _from_run(client: MlflowClient, run_id: str, overrides: list[str]) -> TrainedEncoder:
    try:
        client.get_run(run_id)
    except MlflowException:
        raise SourceError(f"no MLflow run {run_id} in {client.tracking_uri}") from None
    with tempfile.TemporaryDirectory() as directory:
        raw = _run_config(client, run_id, directory)
        try:
            weights = client.download_artifacts(run_id, "encoder/encoder.pt", directory)
        except MlflowException:
            raise SourceError(f"MLflow run {run_id} has no encoder/encoder.pt: did it finish?") from None
        state = torch.load(weights, map_location="cpu", weights_only=True)
    return TrainedEncoder(state, _with_overrides(raw, overrides), run_id, run_id)


def _from_registry(client: MlflowClient, uri: str, overrides: list[str]) -> TrainedEncoder:
    import mlflow.pytorch

    name, _, which = uri.removeprefix("models:/").partition("/")
    try:
        if "@" in name:
            name, alias = name.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            version = client.get_model_version(name, which)
        with mlflow_tracking_uri(client.tracking_uri):  # models:/ resolves against the global URI
            model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except MlflowException as error:
        raise SourceError(f"{uri}: {error.message}") from None
    with tempfile.TemporaryDirectory() as directory:
        raw = _run_config(client, version.run_id, directory)
    return TrainedEncoder(model.state_dict(), _with_overrides(raw, overrides), version.run_id, uri)


def _from_checkpoint(path: str, config_path: str | None, overrides: list[str]) -> TrainedEncoder:
    raw_base = load_raw(config_path, []) if config_path else None
    # Where to read it from: the --config's storage section and the overrides (the checkpoint's
    # own config, inside it, cannot say); else the AWS chain and AWS_ENDPOINT_URL.
    storage = StorageConfig(**apply_overrides(raw_base or {}, overrides).get("storage", {}))
    filesystem, inside = filesystem_for(path, storage.endpoint_url, storage.region)
    with tempfile.TemporaryDirectory() as directory:
        try:
            for name in (STATE_FILE, DIGEST_FILE):
                if filesystem.get_file_info(f"{inside}/{name}").type != pafs.FileType.File:
                    raise SourceError(f"{path}: not a checkpoint (no {name})")
                pafs.copy_files(f"{inside}/{name}", f"{directory}/{name}", source_filesystem=filesystem)
        except OSError as error:
            raise DataSourceError(describe_failure(path, error)) from None
        state = load_state(directory)
    raw = raw_base if raw_base is not None else state.get("config")
    if raw is None:
        raise ConfigError(f"{path}: the checkpoint holds no config; name the pipeline with --config")
    return TrainedEncoder(encoder_state(state), _with_overrides(raw, overrides), None, path)


def load_encoder(
    source: str, tracking_uri: str, config_path: str | None = None, overrides: list[str] | None = None
) -> TrainedEncoder:
    overrides = overrides or []
    client = MlflowClient(tracking_uri)
    if source.startswith("models:/"):
        return _from_registry(client, source, overrides)
    if RUN_ID.fullmatch(source):
        return _from_run(client, source, overrides)
    return _from_checkpoint(source, config_path, overrides)
