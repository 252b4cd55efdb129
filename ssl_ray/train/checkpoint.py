"""Training state <-> a checkpoint directory.

``state.pt`` is written to a temporary name and renamed, and its SHA-256 is written beside it
last; loading checks the digest, so a checkpoint cut short (a worker killed while writing, an
interrupted upload) is refused with a clear error instead of being half-loaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
DIGEST_FILE = "state.sha256"


class IncompleteCheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    directory = Path(directory)
    target = directory / STATE_FILE
    partial = target.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, target)
    digest = directory / DIGEST_FILE
    digest.with_suffix(".partial").write_text(_sha256(target) + "\n")
    os.replace(digest.with_suffix(".partial"), digest)
    return target


def load_state(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    directory = Path(directory)
    path, digest = directory / STATE_FILE, directory / DIGEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint {directory}")
    if not digest.is_file():
        raise IncompleteCheckpointError(f"checkpoint {directory} has no {DIGEST_FILE}: it was not completely written")
    if _sha256(path) != digest.read_text().strip():
        raise IncompleteCheckpointError(f"checkpoint {directory}: {STATE_FILE} does not match its SHA-256 (cut short?)")
    return torch.load(path, map_location=map_location, weights_only=False)


def encoder_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's weights from a full training state (what evaluation and export need)."""
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
