"""SimCLR v2 (Chen et al. 2020b, "Big Self-Supervised Models are Strong Semi-Supervised
Learners", https://arxiv.org/abs/2006.10029): SimCLR's views and NT-Xent with a deeper
projector, 3 layers instead of 2, and the encoder that is fine-tuned on the few labels taken
from the projector's middle: the backbone plus the projector's first layer (Sec. 2.2). That layer is built onto the backbone by the
encoder factory (``kept_head``), so evaluation, export and fine-tuning get it with the encoder;
the fine-tuned network then teaches a student on the unlabelled images (``ssl-ray evaluate
--protocol finetune --protocol distill``, Sec. 2.3).

Left out: the MoCo-style memory of negatives, which the paper adds for "a modest improvement
of ~1%" (Sec. 2.2) at ImageNet's batch 4096; NT-Xent over the batch, as SimCLR here.
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from ssl_ray.methods.registry import register_method
from ssl_ray.methods.simclr import SimCLR


@register_method("simclr_v2")
class SimCLRv2(SimCLR):
    class Params(SimCLR.Params):
        # Linear-BN-ReLU layers, then the output layer (the paper: 3 in all, ResNet-50's width).
        projection_layers: int = Field(default=3, ge=2)
        # How many of them stay with the encoder after pretraining (the paper: the first).
        kept_layers: int = Field(default=1, ge=0)

        @field_validator("kept_layers")
        @classmethod
        def _output_layer_not_kept(cls, kept: int, info: ValidationInfo) -> int:
            layers = info.data.get("projection_layers")
            if layers is not None and kept >= layers:
                raise ValueError(
                    f"{kept} of a {layers}-layer projector would keep its output layer; at most {layers - 1}"
                )
            return kept

    @classmethod
    def kept_head(cls, params) -> tuple[int, ...]:
        return (params.projection_hidden_dim,) * params.kept_layers

    @staticmethod
    def projector_dims(params, feature_dim: int) -> list[int]:
        """The projector's layers after the kept ones (``feature_dim`` is then the kept layer's
        width): ``projection_layers`` in all, the last to ``projection_dim``."""
        hidden = [params.projection_hidden_dim] * (params.projection_layers - params.kept_layers - 1)
        return [feature_dim, *hidden, params.projection_dim]
