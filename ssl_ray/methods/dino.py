"""DINO (Caron et al. 2021): self-distillation without labels. A student (encoder + DINO head)
matches, on every crop, the teacher's output on the other global crops; the teacher is the
student's EMA, its output centred (an EMA of its batch means) and sharpened (a low, warming
temperature), which together keep it from collapsing (Sec. 3.1, Algorithm 1). Multi-crop.

Paper defaults (Sec. 3 and appendix, ResNet-50 / ViT-S): teacher momentum 0.996 -> 1 along a
cosine, centre momentum 0.9, student temperature 0.1, teacher temperature 0.04 -> 0.07 over
the first 30 epochs, head 2048 hidden -> 256 bottleneck -> 65536 (weight-normalised, its last
layer frozen in the first epoch), 2x224 + 10x96 crops, gradient clipping 3.0."""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import MomentumTarget
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.distillation import DINOLoss, updated_center
from ssl_ray.nn.heads import DINOHead
from ssl_ray.nn.multicrop import forward_by_size
from ssl_ray.nn.schedules import linear_warmup_then_constant
from ssl_ray.views.recipe import MULTI_CROP, Batch


@register_method("dino")
class DINO(SSLMethod):
    crops = MULTI_CROP
    frozen_in_first_epoch = ("head.last_layer",)

    class Params(MomentumTarget):
        ema_momentum: float = Field(default=0.996, ge=0.0, le=1.0)
        out_dim: int = Field(default=65536, gt=1)  # K
        hidden_dim: int = Field(default=2048, gt=0)
        bottleneck_dim: int = Field(default=256, gt=0)
        head_bn: bool = False
        norm_last_layer: bool = True  # the last layer's weight norm held at 1
        student_temperature: float = Field(default=0.1, gt=0.0)
        teacher_temperature: float = Field(default=0.04, gt=0.0)  # at step 0
        teacher_temperature_final: float = Field(default=0.07, gt=0.0)
        teacher_temperature_warmup_epochs: float = Field(default=30.0, ge=0.0)
        center_momentum: float = Field(default=0.9, ge=0.0, le=1.0)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        m = params
        self.head = DINOHead(self.feature_dim, m.out_dim, m.hidden_dim, m.bottleneck_dim, m.head_bn, m.norm_last_layer)
        self.add_targets("backbone", "head", momentum=m.ema_momentum, schedule="cosine")  # the teacher
        self.register_buffer("center", torch.zeros(m.out_dim))
        self.criterion = DINOLoss(m.student_temperature)
        self.global_crops = recipe.global_crops

    def teacher_temperature(self) -> float:
        m, clock = self.params, self.clock
        warmup = round(m.teacher_temperature_warmup_epochs * clock.steps_per_epoch)
        return linear_warmup_then_constant(clock.step, warmup, m.teacher_temperature, m.teacher_temperature_final)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        views = batch.views
        features = forward_by_size(self.backbone, views)
        student = [self.head(f) for f in features]
        with torch.no_grad():
            teacher = [self.target_head(f) for f in forward_by_size(self.target_backbone, views[: self.global_crops])]
        loss = self.criterion(student, teacher, self.center, self.teacher_temperature())
        # The monitors watch the encoder's features: the head's K-wide output is too wide for
        # an effective rank, and its collapse is what the centre and sharpening prevent.
        return {"loss": loss, "embedding": features[0].detach(), "teacher_logits": teacher}

    @torch.no_grad()
    def after_step(self, outputs) -> None:
        self.center.copy_(updated_center(self.center, outputs["teacher_logits"], self.params.center_momentum))
