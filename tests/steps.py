"""What the training loop does around a method, for tests that drive a method by hand: the
loop's own step (``ssl_ray.train.step``), with the clock a test names."""

from __future__ import annotations

import numpy as np
import torch

from ssl_ray.methods.base import SSLMethod, TrainingClock
from ssl_ray.train.step import training_step
from ssl_ray.views.recipe import Batch


def take_step(
    method: SSLMethod, optimizer: torch.optim.Optimizer, step: int, total_steps: int, batch: Batch, steps_per_epoch=1
) -> dict:
    """One optimiser step as ``train/loop.py`` takes it (fp32, no guard)."""
    return training_step(method, optimizer, batch, TrainingClock(step, total_steps, steps_per_epoch))


def structured_images(n: int, seed: int, channels: int = 1) -> np.ndarray:
    """``n`` random 28 x 28 uint8 images with a bright block: structure for crops to find; with
    3 channels (N, 28, 28, 3), the block a colour of its own per image."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 28, 28) if channels == 1 else (n, 28, 28, 3)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).numpy()
    if channels == 1:
        images[:, 8:20, 6:22] = 230
    else:
        colours = torch.randint(0, 256, (n, 1, 1, 3), dtype=torch.uint8, generator=generator).numpy()
        images[:, 8:20, 6:22] = colours
    return images


def fit_targets(method: SSLMethod, n: int = 64, seed: int = 0, channels: int | None = None) -> dict:
    """For a method that fits targets (``fits_targets``): fit them as the loop does before the
    first epoch, to ``n`` structured random images numbered 0..n-1 (``batch_for``'s rows are the
    first of them); nothing otherwise."""
    if not method.fits_targets:
        return {}
    from ssl_ray.train.refit import refit_targets

    if channels is None:
        channels = 3 if method.colour_split != "none" else 1
    batch = {
        "image": torch.from_numpy(structured_images(n, seed, channels)),
        "label": torch.arange(n) % 4,
        "sample_index": torch.arange(n),
    }
    return refit_targets(method, None, lambda: [batch], n, 0, torch.device("cpu"))
