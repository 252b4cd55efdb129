"""The trained encoder as an MLflow model (PyTorch flavour) in the model registry.

``mlflow.pytorch.load_model("models:/NAME/VERSION")`` returns the backbone: uint8 images
(N, C, H, W) in, pooled features (N, D) out, any batch size. MLflow saves it with
``torch.export`` (its default "pt2" format): a traced graph, in eval mode, that loads with
torch alone, no ssl-ray and no unpickling of code; being a graph, it has no ``.eval()``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ssl_ray.console import library_prints_hidden
from ssl_ray.tracking.mlflow_run import mlflow_tracking_uri

ARTIFACT_NAME = "encoder_model"


def _requirements() -> list[str]:
    # Named, not inferred (MLflow's inference imports the model in a subprocess: slow); an
    # exported graph needs torch only.
    return [f"torch=={torch.__version__.split('+')[0]}"]


def log_encoder_model(
    tracking_uri: str, run_id: str, encoder: nn.Module, example: np.ndarray, registered_name: str | None
) -> str:
    """Logs ``encoder`` (CPU, eval mode) to the run with its signature and ``example`` (a small
    uint8 batch) and registers it under ``registered_name``; returns the model's URI."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    encoder = encoder.cpu().eval()
    with torch.no_grad():
        features = encoder(torch.from_numpy(example)).numpy()
    with mlflow_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id), library_prints_hidden():
        info = mlflow.pytorch.log_model(
            encoder,
            name=ARTIFACT_NAME,
            signature=infer_signature(example, features),
            input_example=example,
            registered_model_name=registered_name,
            pip_requirements=_requirements(),
        )
    return info.model_uri
