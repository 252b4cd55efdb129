"""The dense protocol's parts that need no encoder: a linear segmentation head (a 1x1
convolution on frozen feature maps, its logits upsampled bilinearly to the mask) trained with
cross-entropy, its per-pixel predictions, and the scores of the field's segmentation
benchmarks: mean intersection-over-union over the classes and pixel accuracy, from one
confusion matrix over all test pixels (as PASCAL VOC and mmsegmentation count them, not a
mean of per-image scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SegmentScores:
    miou: float  # mean over the classes that occur in the truth or the prediction
    pixel_accuracy: float
    iou: dict[int, float]  # per class


def confusion(predicted: torch.Tensor, truth: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) counts, rows the true class, columns the predicted one."""
    index = truth.reshape(-1).long() * classes + predicted.reshape(-1).long()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def scores(matrix: torch.Tensor) -> SegmentScores:
    """IoU_c = TP_c / (TP_c + FP_c + FN_c) for each class seen (true or predicted), their mean,
    and the share of pixels predicted right."""
    matrix = matrix.double()
    hits = matrix.diag()
    union = matrix.sum(dim=0) + matrix.sum(dim=1) - hits
    seen = union > 0
    iou = {int(c): float(hits[c] / union[c]) for c in torch.nonzero(seen).flatten()}
    return SegmentScores(float(np.mean(list(iou.values()))), float(hits.sum() / matrix.sum().clamp_min(1)), iou)


def fit_linear_head(
    features: torch.Tensor,
    masks: torch.Tensor,
    classes: int,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> nn.Conv2d:
    """A 1x1 convolution from feature maps (N, D, h, w) to class logits, trained so that its
    logits, upsampled to the masks' (N, H, W) size, score the masks' classes (cross-entropy,
    AdamW). The features are standardised per channel first (their statistics folded into the
    head), so an encoder's feature scale does not set the step size."""
    generator = torch.Generator().manual_seed(seed)
    mean = features.mean(dim=(0, 2, 3))
    std = features.std(dim=(0, 2, 3)).clamp_min(1e-6)
    head = nn.Conv2d(features.shape[1], classes, kernel_size=1)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    size = masks.shape[-2:]
    for _ in range(epochs):
        for rows in torch.randperm(len(features), generator=generator).split(batch_size):
            x = (features[rows] - mean[:, None, None]) / std[:, None, None]
            logits = F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, masks[rows].long())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    with torch.no_grad():  # the standardisation, folded into the convolution
        weight = head.weight[:, :, 0, 0] / std
        head.bias -= (weight * mean).sum(dim=1)
        head.weight.copy_(weight[:, :, None, None])
    return head


@torch.no_grad()
def predict(head: nn.Conv2d, features: torch.Tensor, size: tuple[int, int], batch_size: int = 256) -> torch.Tensor:
    """(N, H, W) classes the head gives each pixel of masks of ``size``."""
    parts = [
        F.interpolate(head(x), size=size, mode="bilinear", align_corners=False).argmax(dim=1)
        for x in features.split(batch_size)
    ]
    return torch.cat(parts)
