"""Distillation of the fine-tuned network into a student on the unlabelled training images
(SimCLR v2, Chen et al. 2020b, Sec. 2.3): ``ssl-ray evaluate RUN --protocol finetune --protocol
distill``. A run of the pretraining loop with the ``distill`` method, nested in MLflow under
the run being evaluated like fine-tuning's: the teacher is the network fine-tuned on
``fraction`` of the labels, the student starts from the pretrained encoder, and every image of
the fine-tuning's pool is a training image (its label unused). The student's classifier's
top-1 on the test images is the protocol's figure, beside the teacher's.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ssl_ray.config import PipelineConfig, config_from_dict
from ssl_ray.eval.finetune import (
    EVERY_IMAGE,
    FineTuned,
    RunSizes,
    classifier_top1,
    finetune_config,
    finetune_epochs,
    label_tag,
)
from ssl_ray.methods.distill import Distill


def distill_config(
    pretraining: PipelineConfig, fraction: float, num_classes: int, sizes: RunSizes = EVERY_IMAGE
) -> PipelineConfig:
    """Fine-tuning's recipe (views, optimiser, encoder with its kept head) on the whole pool,
    for as many epochs as the teacher's fine-tuning had."""
    epochs = finetune_epochs(pretraining, fraction, sizes)
    raw = finetune_config(pretraining, 1.0, replace(sizes, epochs=epochs)).model_dump(mode="json")
    raw["method"] = {"name": "distill", "num_classes": num_classes}
    raw["train"]["run_name"] = f"{pretraining.run_prefix}-distill-{label_tag(fraction)}"
    return config_from_dict(raw)


def distill(
    pretraining: PipelineConfig,
    backbone: dict[str, torch.Tensor],
    teacher: FineTuned,
    fraction: float,
    parent_run_id: str,
    sizes: RunSizes = EVERY_IMAGE,
) -> float:
    """Test top-1 of the student distilled from ``teacher`` (fine-tuned on ``fraction``)."""
    from ssl_ray.train.trainer import run_pretraining  # Ray Train's driver: only when needed

    num_classes = int(teacher.model_state["classifier.weight"].shape[0])
    config = distill_config(pretraining, fraction, num_classes, sizes)
    start = {f"backbone.{k}": v for k, v in backbone.items()}
    start.update(
        {f"teacher.{k}": v for k, v in teacher.model_state.items() if k.split(".", 1)[0] in Distill.teacher_parts}
    )
    return classifier_top1(run_pretraining(config, init_state=start, parent_run_id=parent_run_id))
