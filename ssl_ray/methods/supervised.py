"""Supervised training through the pretraining loop: cross-entropy of a linear classifier on
the encoder's pooled features of one view.

Two uses in the evaluation suite: from a random init on all labels, the supervised reference
(the same encoder, loop and budget as the SSL run); from a pretrained encoder on a few labels
(``data.label_fraction``), few-label fine-tuning of the whole network (SimCLR Sec. 6, Table 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import Labelled
from ssl_ray.methods.registry import register_method


@register_method("supervised")
class Supervised(SSLMethod):
    uses_labels = True
    classifies = True
    Params = Labelled

    def __init__(self, config) -> None:
        super().__init__(config)
        if config.method.num_classes is None:
            raise ValueError("method.num_classes: the supervised method needs the number of classes")
        self.classifier = nn.Linear(self.feature_dim, config.method.num_classes)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if labels is None:
            raise ValueError("the supervised method needs the batch's labels")
        features = self.backbone(views[0])
        return {"loss": F.cross_entropy(self.classifier(features).float(), labels), "embedding": features.detach()}
