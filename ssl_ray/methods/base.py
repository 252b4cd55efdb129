"""What every SSL method is: an encoder, its heads, and a loss over a batch its recipe declares."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ssl_ray.methods.params import MethodParams
from ssl_ray.nn.momentum import MomentumTargets, deactivate_requires_grad, update_momentum
from ssl_ray.sections import AugmentConfig, ModelConfig
from ssl_ray.views.parts import RecipePart
from ssl_ray.views.recipe import TWO_VIEWS, Batch, BatchRecipe, Crops


@dataclass(frozen=True)
class TrainingClock:
    """Where training stands: the global step being taken, and the run's length. The loop sets
    it before every step; methods compute their schedules from it (EMA momentum, DINO's teacher
    temperature), so a resumed run lands on the same values."""

    step: int = 0
    total_steps: int = 1
    steps_per_epoch: int = 1

    @property
    def in_first_epoch(self) -> bool:
        return self.step < self.steps_per_epoch


class SSLMethod(nn.Module):
    """Subclasses add their heads and implement ``forward(batch) -> {"loss": ..., "embedding": ...}``:
    the loss to minimise and one view's embeddings (N, D) for the collapse monitors, plus
    whatever ``after_step`` needs of this step (MoCo's new keys), which the step hands it.

    A method is built from what it needs and nothing more: its own ``Params`` (``method.*``),
    the encoder the shared factory made (``self.backbone``: what is kept, evaluated and exported
    after pretraining) with its feature size, and its batch recipe. It never sees the pipeline
    config, so it can be built and tested without one.
    """

    name: str = ""
    # The method's hyperparameters (``method.*``) with its paper's defaults.
    Params: ClassVar[type[MethodParams]] = MethodParams
    # The views it takes: two (TWO_VIEWS) or multi-crop's global and local crops (MULTI_CROP).
    crops: ClassVar[Crops] = TWO_VIEWS
    # Submodules whose gradients are dropped during the first epoch (SwAV's prototypes, DINO's
    # last layer): their optimiser step is skipped while the rest of the network settles.
    frozen_in_first_epoch: ClassVar[tuple[str, ...]] = ()
    # Submodules trained at the peak learning rate throughout (SimSiam's predictor).
    fixed_lr_modules: tuple[str, ...] = ()
    # Whether BatchNorm should see the global batch on several GPU workers (SyncBN, as the
    # papers train); False where the method has its own answer (MoCo v1/v2's shuffled BN).
    sync_batchnorm: ClassVar[bool] = True
    # Whether the batch carries the labels (``batch.labels``): supervised training and
    # fine-tuning; the data source must then have labels.
    uses_labels: ClassVar[bool] = False
    # Whether it has a classifier, ``logits(images)``: the loop then reports its test top-1.
    classifies: ClassVar[bool] = False
    # Whether it trains on targets it fits to the encoder's features of the whole training set
    # between epochs (DeepCluster's k-means pseudo-labels). The loop then embeds every training
    # image when ``targets_due`` says so (``train/refit.py``), in two streamed passes: a sample
    # to ``fit_targets`` on, then every image through the fitted ``assign``; the result goes to
    # ``adopt_targets``. What is fitted to is ``target_features`` of the images: the encoder's
    # features by default, anything per image a method needs (colourisation's colour histograms).
    fits_targets: ClassVar[bool] = False
    # Whether the data pipeline then draws images uniformly over the targets' classes
    # (``target_classes``: DeepCluster's fix for empty clusters).
    balanced_over_targets: ClassVar[bool] = False
    # Buffers the fit sets on rank 0 that every rank must hold (colourisation's rebalancing
    # weights): broadcast from rank 0 once the targets are adopted.
    fitted_buffers: ClassVar[tuple[str, ...]] = ()
    # Submodules re-initialised with each new set of targets: their optimiser state is dropped.
    reset_with_targets: ClassVar[tuple[str, ...]] = ()
    # Submodules whose weights a run must be given to start from (a distillation's teacher:
    # ``run_pretraining(init_state=...)``), and what to tell a user who starts one without.
    given_state: ClassVar[tuple[str, ...]] = ()
    given_state_why: ClassVar[str] = ""
    # Whether it draws a picture of its work on held-out images after the last epoch (``illustrate``).
    illustrates: ClassVar[bool] = False
    # How its encoder reads colour (``nn.backbones.build_encoder``): "lab" splits L from ab
    # (CMC), "luminance" reads L alone (colourisation): both need 3-channel images; "none" for
    # the rest.
    colour_split: ClassVar[str] = "none"

    @classmethod
    def kept_head(cls, params: MethodParams) -> tuple[int, ...]:
        """Widths of the head layers that stay with the backbone as part of the encoder after
        pretraining (evaluated, exported, fine-tuned): the factory builds them onto the
        backbone, so ``self.backbone`` includes them and the method's own head starts after
        them. None by default (the backbone's pooled features are the representation)."""
        return ()

    @classmethod
    def patch_grid(cls, params: MethodParams) -> tuple[int, int] | None:
        """``(patch, stride)`` when its encoder reads an image as a grid of patches, each encoded
        alone and their features averaged (CPC v2: what it is trained on), built by the factory;
        None (the whole image) by default."""
        return None

    @classmethod
    def model_refusal(cls, params: MethodParams, model: ModelConfig) -> str | None:
        """Why the method cannot train this encoder (``model.*``), naming the field to change;
        None when it can. Asked when the config is parsed."""
        return None

    @classmethod
    def data_refusal(cls, params: MethodParams, train_size: int) -> str | None:
        """Why the method cannot train on ``train_size`` images, naming the field to change;
        None when it can. Asked once the data are counted, before any worker starts."""
        return None

    @classmethod
    def recipe_parts(cls, params: MethodParams) -> tuple[RecipePart, ...]:
        """What its batch carries beyond the views (``views.parts``); nothing by default."""
        return ()

    @classmethod
    def recipe(cls, params: MethodParams, augment: AugmentConfig) -> BatchRecipe:
        return BatchRecipe(augment, cls.crops, cls.recipe_parts(params))

    def __init__(self, params: MethodParams, encoder: nn.Module, feature_dim: int, recipe: BatchRecipe) -> None:
        super().__init__()
        self.params = params
        self.recipe = recipe
        self.clock = TrainingClock()
        self.backbone, self.feature_dim = encoder, feature_dim
        self.targets: MomentumTargets | None = None

    def add_targets(self, *names: str, momentum: float, schedule: Literal["constant", "cosine"]) -> None:
        """Momentum targets of the named online submodules, starting as exact copies: MoCo's
        key encoder, BYOL's target network, DINO's teacher. The training step moves them after
        every optimiser step along their schedule (``update_targets``), nothing else does.
        A subclass adds its own heads' targets with a second call (DenseCL's dense head on
        MoCo v2's), on the same schedule."""
        declared = self.targets.online if self.targets is not None else ()
        if declared and (self.targets.start, self.targets.schedule) != (momentum, schedule):
            raise ValueError(f"targets {declared} follow another momentum schedule than {names}")
        for name in names:
            setattr(self, f"target_{name}", deactivate_requires_grad(copy.deepcopy(getattr(self, name))))
        self.targets = MomentumTargets(declared + names, momentum, schedule)

    @torch.no_grad()
    def update_targets(self) -> None:
        if self.targets is None:
            return
        momentum = self.targets.momentum_at(self.clock.step, self.clock.total_steps)
        for name in self.targets.online:
            update_momentum(getattr(self, name), getattr(self, f"target_{name}"), momentum)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def drop_frozen_gradients(self) -> None:
        """Before the optimiser step: no update (not even weight decay) for the submodules
        frozen in the first epoch, as the reference codes do by setting their gradients to None."""
        if not self.clock.in_first_epoch:
            return
        for name in self.frozen_in_first_epoch:
            for parameter in self.get_submodule(name).parameters():
                parameter.grad = None

    def targets_due(self, epoch: int) -> bool:
        """Before training epoch ``epoch + 1``: whether to fit new targets (``fits_targets``)."""
        return False

    def target_sample_size(self) -> int:
        """How many training images the fit needs at most (the rest are only assigned)."""
        raise NotImplementedError

    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        """What the fit sees of each training image (N, C, H, W uint8): (N, D)."""
        return self.backbone(images)

    def fit_targets(self, features: torch.Tensor, seed: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Fit to the sample's ``target_features`` (N, D); returns features -> each row's
        target, or None when the fit gives nothing per image (only ``fitted_buffers``)."""
        raise NotImplementedError

    def adopt_targets(self, epoch: int, index: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> dict:
        """Take every image's target (``index``: sample indices; ``labels``: the true ones, -1
        unknown) for the epochs from ``epoch + 1``; returns metrics about them to log."""
        raise NotImplementedError

    def target_classes(self) -> torch.Tensor | None:
        """Each training image's class under the current targets (indexed by sample index), for
        the data pipeline's class-uniform draws; None before any."""
        return None

    @torch.no_grad()
    def illustrate(self, images: torch.Tensor) -> torch.Tensor:
        """With ``illustrates``: a picture of what the method does to these held-out images
        (N, C, H, W uint8), as float RGB rows in [0, 1] (R, N, 3, H, W) that the loop lays out
        as a grid and logs to the run after its last epoch (colourisation: the gray input, the
        colours it predicts, the truth)."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, outputs: dict[str, Any]) -> None:
        """Hook after each optimiser step and the targets' update, given this step's forward
        outputs (queues, centres); ``self.clock`` says which step it was. Nothing by default."""


def vit_refusal(name: str, does: str, model: ModelConfig) -> str | None:
    """A ViT-only method's ``model_refusal``: ``does`` says what it needs the ViT for."""
    if model.backbone.startswith("vit"):
        return None
    return (
        f"model.backbone: {name} {does}, and {model.backbone} is a ResNet "
        f"(model.backbone=vit_tiny, as pipelines/{name}_fashion_mnist.yaml)"
    )
