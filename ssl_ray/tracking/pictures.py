"""Pictures of images for an MLflow run: rows of images laid out as one PNG."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid


def save_image_rows(rows: torch.Tensor, path: str | Path, scale: int = 2) -> Path:
    """``rows`` (R, N, 3, H, W) floats in [0, 1] as a PNG grid of R rows of N images with white
    gaps, each pixel drawn ``scale`` times (small images stay legible in the UI)."""
    grid = make_grid(rows.flatten(0, 1).float().cpu(), nrow=rows.shape[1], padding=2, pad_value=1.0)
    pixels = grid.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels)
    picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).save(path)
    return Path(path)
