"""Training state <-> a checkpoint directory. Written to a temp file and renamed, so a reader
never sees a half-written ``state.pt``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    target = Path(directory) / STATE_FILE
    partial = target.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, target)
    return target


def load_state(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint {directory}")
    return torch.load(path, map_location=map_location, weights_only=False)


def encoder_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's weights from a full training state (what evaluation and export need)."""
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
