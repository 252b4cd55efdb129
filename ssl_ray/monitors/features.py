"""Feature extraction from a frozen encoder over a Ray Data iterator."""

from __future__ import annotations

import torch
from torch import nn

from ssl_ray.nn.backbones import ImageInput
from ssl_ray.nn.precision import autocast


def as_nchw(images: torch.Tensor) -> torch.Tensor:
    """Sources give (N, H, W) grayscale or (N, H, W, C) colour images; encoders take NCHW."""
    return images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)


def pixels_as_features() -> nn.Module:
    """The identity "encoder": flattened pixels, mapped to [-1, 1] as the encoders' input is
    (centred pixels are the stronger kNN baseline: 81.5% vs 79.1% for [0, 1] on Fashion-MNIST)."""
    return nn.Sequential(ImageInput(), nn.Flatten())


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    batches,
    device: torch.device,
    precision: str,
    image_key: str = "image",
    label_key: str = "label",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encoder`` in eval mode over ``batches`` (dicts of tensors); returns features (N, D)
    and labels (N,) on ``device``. The encoder's train/eval mode is restored afterwards."""
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    try:
        for batch in batches:
            images = as_nchw(batch[image_key].to(device, non_blocking=True))
            with autocast(precision, device):
                features.append(encoder(images).float())
            labels.append(batch[label_key].to(device))
    finally:
        encoder.train(was_training)
    if not features:
        raise ValueError("no images to extract features from")
    return torch.cat(features), torch.cat(labels)
