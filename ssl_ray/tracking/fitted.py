"""What a method fits before training (BEiT's tokenizer, colorization's rebalancing weights):
the file a run logs it as, under its ``fitted/`` artifacts, and that file read back for a
later run (``train.fitted_from``), from an MLflow run id or a path."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ssl_ray.tracking.mlflow_run import RUN_ID

ARTIFACTS = "fitted"


class FittedSourceError(ValueError):
    pass


def fitted_file(method_name: str, before_epoch: int) -> str:
    return f"{method_name}_before_epoch_{before_epoch}.pt"


def _first_line(error: MlflowException) -> str:
    return str(error.message).splitlines()[0] if error.message else type(error).__name__


def _from_run(run_id: str, method_name: str, tracking_uri: str, directory: str) -> Path:
    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as error:
        raise FittedSourceError(f"no MLflow run {run_id} at {tracking_uri} ({_first_line(error)})") from None
    name = f"{ARTIFACTS}/{fitted_file(method_name, 1)}"
    if name not in {a.path for a in client.list_artifacts(run_id, ARTIFACTS)}:
        raise FittedSourceError(
            f"MLflow run {run_id} logged no {name}: a {method_name} run logs it before its first epoch "
            "(is it a run of another method, or one stopped before its fit?)"
        )
    return Path(client.download_artifacts(run_id, name, directory))


def load_fitted(source: str, method_name: str, tracking_uri: str) -> dict[str, torch.Tensor]:
    """The tensors an earlier fit left, by the method's buffer names. ``source``: an MLflow
    run id (32 hex digits; its first fit is read) or a ``.pt`` file such a run logged."""
    with tempfile.TemporaryDirectory() as directory:
        if RUN_ID.fullmatch(source):
            path = _from_run(source, method_name, tracking_uri, directory)
        elif source.endswith(".pt"):
            path = Path(source).expanduser()
            if not path.is_file():
                raise FittedSourceError(f"{source} is not a file")
        else:
            raise FittedSourceError(f"{source!r} is neither an MLflow run id (32 hex digits) nor a .pt file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file: said with its name
            raise FittedSourceError(f"{source} could not be read as a fit ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FittedSourceError(f"{source} holds no tensors by name (not a fitted/ file)")
    return state
