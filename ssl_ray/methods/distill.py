"""Distillation of a fine-tuned classifier into a student on unlabelled images (SimCLR v2,
Chen et al. 2020b, Sec. 2.3): the teacher (the pretrained encoder fine-tuned on a few labels,
with its classifier) is frozen; the student, of the same shape (the paper's self-distillation),
learns its temperature-softened predictions (Eq. 3) on every training image, labels unused.

Not run from ``ssl-ray pretrain``: the teacher's weights are given to the run
(``given_state``) by ``ssl-ray evaluate RUN --protocol finetune --protocol distill``
(``eval/distill.py``), which starts the student from the pretrained encoder (a choice of ours:
the paper's student may also start from scratch) and scores its classifier on the test images.
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field

from ssl_ray.methods.params import Labelled
from ssl_ray.methods.registry import register_method
from ssl_ray.methods.supervised import Supervised
from ssl_ray.nn.distillation import SoftTargetCrossEntropy
from ssl_ray.nn.momentum import deactivate_requires_grad
from ssl_ray.views.recipe import Batch


@register_method("distill")
class Distill(Supervised):
    uses_labels = False  # the teacher's predictions are the targets
    given_state = ("teacher",)
    given_state_why = (
        "learns from a fine-tuned teacher it is given: run it as "
        "`ssl-ray evaluate RUN --protocol finetune --protocol distill`"
    )

    # The teacher has the supervised method's shape, so its state is a fine-tuned run's under
    # ``teacher.`` (``eval/distill.py`` hands these parts over).
    teacher_parts = ("backbone", "feature_norm", "classifier")

    class Params(Labelled):
        temperature: float = Field(default=1.0, gt=0.0)  # the paper's, for distilling on unlabelled images

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        teacher = torch.nn.Module()
        for name in self.teacher_parts:
            teacher.add_module(name, copy.deepcopy(getattr(self, name)))
        for module in teacher.modules():  # its own network until its weights are given
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.teacher = deactivate_requires_grad(teacher)
        self.criterion = SoftTargetCrossEntropy(params.temperature)

    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        self.teacher.eval()  # its BN statistics are the fine-tuned ones, always
        return self

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        images = batch.views[0]
        features = self.backbone(images)
        with torch.no_grad():
            teacher = self.teacher.classifier(self.teacher.feature_norm(self.teacher.backbone(images)))
        loss = self.criterion(self.classify(features).float(), teacher.float())
        return {"loss": loss, "embedding": features.detach()}
