"""Targets a method fits to the encoder's features of the whole training set between epochs
(``SSLMethod.fits_targets``: DeepCluster's k-means pseudo-labels).

Rank 0 streams the training images (``PretrainData.training_images``: each once, no views)
through the encoder (``method.target_features``) on its training device, in two passes: a
seeded sample of at most ``method.target_sample_size()`` images, which the method fits to,
then every image, which the fit assigns batch by batch (one pass when the sample is the whole
set, or when the fit gives nothing per image: colourisation's rebalancing weights, which are
broadcast as they are, ``fitted_buffers``). Only the sample's
features and one integer per image are ever held. Every rank then adopts the same targets
(rank 0 broadcasts them) and re-initialises the same heads under the same seed, so DDP's
replicas stay equal; the heads' optimiser state is dropped with their old weights.

The paper's inference is batch inference over the data too; it runs here on the training
workers' own devices, which the training holds (an actor pool beside them would need devices
of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from ssl_ray.methods.base import SSLMethod
from ssl_ray.monitors.features import as_nchw
from ssl_ray.nn.distributed import rank, rank_zero_rows, rank_zero_tensor
from ssl_ray.nn.precision import autocast
from ssl_ray.views.parts import SAMPLE_INDEX

Passes = Callable[[], Iterable[dict[str, torch.Tensor]]]  # a fresh pass over the training images


@torch.no_grad()
def _encoded(method: SSLMethod, batches, device, precision, keep: np.ndarray | None = None):
    """(``target_features``, sample indices, labels) per batch; with ``keep`` (by sample
    index), only the rows it marks are encoded."""
    for batch in batches:
        index = batch[SAMPLE_INDEX]
        rows = torch.arange(len(index)) if keep is None else torch.from_numpy(np.flatnonzero(keep[index.numpy()]))
        if len(rows) == 0:
            continue
        images = as_nchw(batch["image"][rows].to(device, non_blocking=True))
        with autocast(precision, device):
            features = method.target_features(images).float()
        yield features, index[rows], batch["label"][rows]


def _fit_and_assign(
    method: SSLMethod, passes: Passes, total: int, device, precision: str, seed: int
) -> tuple[torch.Tensor, int]:
    """Rank 0: (N, 3) rows of sample index, target, true label (-1 unknown), none when the fit
    gives nothing per image; and how many images it was fitted to."""
    encoder = method.backbone
    was_training = encoder.training
    encoder.eval()
    try:
        share = method.target_sample_size() / max(1, total)
        keep = None if share >= 1 else np.random.default_rng([seed, 7]).random(total) < share
        sample = list(_encoded(method, passes(), device, precision, keep))
        if not sample:
            raise RuntimeError("fitting targets: the training images gave no decodable image")
        features = torch.cat([f for f, _, _ in sample])
        fitted_on = len(features)
        assign = method.fit_targets(features, seed)
        if assign is None:
            parts = []
        elif keep is None:  # the sample is every image
            parts = [(index, assign(f), labels) for f, index, labels in sample]
        else:
            del sample, features
            parts = [(index, assign(f), labels) for f, index, labels in _encoded(method, passes(), device, precision)]
    finally:
        encoder.train(was_training)
    if not parts:
        return torch.empty((0, 3), dtype=torch.long), fitted_on
    return torch.stack([torch.cat([p[i].cpu().long() for p in parts]) for i in range(3)], dim=1), fitted_on


def refit_targets(
    method: SSLMethod,
    optimizer: torch.optim.Optimizer | None,
    passes: Passes,
    total: int,
    epoch: int,
    device: torch.device,
    precision: str = "fp32",
    seed: int = 0,
) -> dict[str, float]:
    """New targets for the epochs from ``epoch + 1``, on every rank; returns rank 0's metrics
    about them (the method's) with the images they cover. ``passes`` is called on rank 0 only."""
    seed = seed * 1009 + epoch  # a new sample and k-means start per fit, the same on a resume
    table, fitted_on = _fit_and_assign(method, passes, total, device, precision, seed) if rank() == 0 else (None, 0)
    table = rank_zero_rows(table, 3, device).cpu()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the re-initialised heads: the same on every rank
        metrics = method.adopt_targets(epoch, table[:, 0], table[:, 1], table[:, 2])
    for name in method.fitted_buffers:
        rank_zero_tensor(getattr(method, name))
    if optimizer is not None:
        for name in method.reset_with_targets:
            for parameter in method.get_submodule(name).parameters():
                optimizer.state.pop(parameter, None)
    return {**metrics, "targets_fitted_images": float(len(table) or fitted_on)}


def adopt_fitted(method: SSLMethod, state: dict[str, torch.Tensor], epoch: int) -> dict[str, float]:
    """An earlier run's fit (``train.fitted_from``: BEiT's tokenizer, colorization's weights)
    in place of this run's, the same on every rank (each is handed the same tensors); returns
    the method's metrics about it, as a fit of its own would."""
    for name, value in state.items():
        getattr(method, name).copy_(value)
    nothing = torch.empty(0, dtype=torch.long)
    return method.adopt_targets(epoch, nothing, nothing, nothing)
