"""Few-label fine-tuning through Ray Train: the whole network, from the pretrained encoder, on
a class-balanced share of the labels (SimCLR Sec. 6: 1% and 10% of ImageNet's labels), and the
same from a random init as its baseline; at 100% from a random init it is the supervised
reference at the pretraining's own budget.

Each is a run of the pretraining loop with the ``supervised`` method, nested in MLflow under
the run being evaluated; its classifier's top-1 on the test images is the protocol's figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ssl_ray.config import PipelineConfig, config_from_dict
from ssl_ray.data import fashion_mnist

# SimCLR fine-tunes for 60 epochs on 1% of the labels and 30 on 10%; the full set gets the
# pretraining's own epoch count (the supervised reference's "same budget").
EPOCHS_BY_FRACTION = {0.01: 60, 0.1: 30}
BASE_LR = 0.05  # per 256 images, SGD with momentum, no warm-up (SimCLR Appendix B.5 uses 0.05 x B/256)


def label_tag(fraction: float) -> str:
    """1% -> "1pct": what metric names and run names carry."""
    return f"{100 * fraction:g}pct"


@dataclass(frozen=True)
class RunSizes:
    """How long, and on which images, the evaluation's training runs go."""

    epochs: int | None = None  # None: 60 at 1%, 30 at 10%, the pretraining's at 100%
    train_size: int | None = None  # a class-stratified sample of the labelled training images
    test_size: int | None = None
    seed: int = 0  # the few labels' draw
    pool_size: int | None = None  # the labelled training images there are (what a batch must fit)


EVERY_IMAGE = RunSizes()  # the defaults: every labelled image, the fraction's epochs


def finetune_epochs(pretraining: PipelineConfig, fraction: float, sizes: RunSizes) -> int:
    return sizes.epochs or EPOCHS_BY_FRACTION.get(fraction, pretraining.train.epochs)


def finetune_config(
    pretraining: PipelineConfig, fraction: float, sizes: RunSizes = EVERY_IMAGE, from_scratch: bool = False
) -> PipelineConfig:
    """The few labels are a class-balanced share of a ``sizes.train_size`` stratified sample of
    the labelled training images."""
    raw = pretraining.model_dump(mode="json")
    epochs = finetune_epochs(pretraining, fraction, sizes)
    train_size, test_size, seed = sizes.train_size, sizes.test_size, sizes.seed
    labelled = min(train_size or math.inf, sizes.pool_size or math.inf)
    labelled = (60000 if labelled == math.inf else labelled) * fraction
    workers = pretraining.train.num_workers
    batch = max(workers, min(pretraining.train.batch_size, int(labelled // 2) // workers * workers))
    raw["method"] = {"name": "supervised"}
    # The encoder as pretrained, with any head layers it keeps (SimCLR v2 fine-tunes from its
    # projector's first layer): the supervised method's own declaration is none.
    raw["model"]["encoder_head"] = list(pretraining.encoder_head)
    raw["model"]["colour_split"] = pretraining.colour_split  # CMC's L/ab encoder stays one
    patch_grid = pretraining.patch_grid  # CPC v2's patch encoder too
    raw["model"]["patch_grid"] = list(patch_grid) if patch_grid else None
    raw["data"].update(label_fraction=None if fraction >= 1.0 else fraction, label_seed=seed, train_subset=train_size)
    # Fine-tuning views: crop and flip, no colour (SimCLR's fine-tuning recipe), and no local
    # crops whatever the pretraining used (the classifier trains on one global view).
    raw["augment"].update(strength=0.0, jitter_p=0.0, blur_p=0.0, solarize_p=0.0, global_crops=2, local_crops=0)
    if pretraining.data.source == "fashion_mnist":
        # The classifier is scored on the test images as they are (28 px); a pretext task's
        # larger views (tiles need room: 36-48 px) would train it at another scale. Measured:
        # relative location's encoder fine-tuned at its 48 px views scored 36.6% at 28 px.
        raw["augment"]["image_size"] = fashion_mnist.IMAGE_SIZE
    raw["optim"] = {"name": "sgd", "base_lr": BASE_LR, "lr_scaling": "linear", "weight_decay": 5e-4, "warmup_epochs": 0}
    start = "scratch" if from_scratch else "finetune"
    raw["train"].update(
        epochs=epochs,
        batch_size=batch,
        run_name=f"{pretraining.run_prefix}-{start}-{label_tag(fraction)}",
        checkpoint_every_epochs=epochs,
        max_steps_per_epoch=None,
    )
    # The classifier's top-1 on the test images is computed with the kNN pass at the end.
    raw["eval"].update(
        linear_probe_at_end=False,
        knn_at_init=False,
        knn_raw_pixels=False,
        knn_every_epochs=0,
        knn_bank_size=1000,
        knn_query_size=test_size,
    )
    return config_from_dict(raw)


@dataclass(frozen=True)
class FineTuned:
    test_top1: float  # the classifier's, on the test images
    model_state: dict[str, torch.Tensor]  # the whole network: encoder, feature norm, classifier


def finetune(
    pretraining: PipelineConfig,
    backbone: dict[str, torch.Tensor] | None,
    fraction: float,
    parent_run_id: str,
    sizes: RunSizes = EVERY_IMAGE,
) -> FineTuned:
    """Fine-tunes ``backbone`` (None: from the random init) on ``fraction`` of the labels."""
    from ssl_ray.train.trainer import run_pretraining  # Ray Train's driver: only when needed

    config = finetune_config(pretraining, fraction, sizes, from_scratch=backbone is None)
    start = None if backbone is None else {f"backbone.{k}": v for k, v in backbone.items()}
    trained: dict = {}
    result = run_pretraining(
        config,
        init_state=start,
        parent_run_id=parent_run_id,
        after_training=lambda run: trained.update(run.model_state),
    )
    return FineTuned(classifier_top1(result), trained)


def classifier_top1(result) -> float:
    if result.test_top1 is None:
        raise RuntimeError(f"run {result.mlflow_run_id} reported no test_top1 (no labelled test set?)")
    return result.test_top1
