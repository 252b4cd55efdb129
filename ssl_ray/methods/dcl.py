"""DCL (Yeh et al. 2022, "Decoupled Contrastive Learning"): SimCLR's two views and projector,
with the positive pair taken out of the contrastive denominator; DCLW weighs each positive by
a von Mises-Fisher kernel of its similarity (``method.weight_sigma``, the paper's 0.5).

Paper defaults (Sec. 5, ImageNet / CIFAR): temperature 0.1, SimCLR's projector; DCL needs
smaller batches and fewer epochs than SimCLR for the same accuracy."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from ssl_ray.methods.registry import register_method
from ssl_ray.methods.simclr import SimCLR
from ssl_ray.nn.losses import DecoupledContrastiveLoss


@register_method("dcl")
class DCL(SimCLR):
    class Params(SimCLR.Params):
        # None: DCL; a value: DCLW's weighting width sigma.
        weight_sigma: float | None = Field(default=None, gt=0.0)

    @staticmethod
    def build_criterion(params) -> nn.Module:
        return DecoupledContrastiveLoss(params.temperature, params.weight_sigma)
