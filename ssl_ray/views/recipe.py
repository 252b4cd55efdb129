"""Batch recipes: what a method's batch carries, declared by the method, built by the pipeline.

A method declares whether it takes two views or multi-crop's global and local crops, and the
parts its batch needs beyond them (``views.parts``: crop boxes, rotated copies with their
labels, ...). ``augment`` says how the views are drawn. Ray Data's ``ViewMaker`` turns each
block of decoded images into the recipe's columns; ``to_batch`` turns one batch of those
columns into the ``Batch`` the method's ``forward`` takes, on the training device, after the
colour stage when it runs there. The loop and the data sources only ever see a recipe, so a
new kind of batch is a new part, not a change to either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ssl_ray.sections import AugmentConfig
from ssl_ray.views.parts import SAMPLE_INDEX, RecipePart
from ssl_ray.views.transforms import DeviceViews, ViewMaker


@dataclass
class Batch:
    """One training batch on the device: the views (global crops first, then local crops, each
    (N, C, S, S)), the labels when the method trains on them, and its recipe parts' columns."""

    views: list[torch.Tensor]
    labels: torch.Tensor | None = None
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.parts:
            raise KeyError(f"the batch has no {name!r}: its recipe's parts give {sorted(self.parts) or 'nothing'}")
        return self.parts[name]

    @property
    def size(self) -> int:
        return self.views[0].shape[0]


@dataclass(frozen=True)
class Crops:
    """Which views a method takes: ``two`` (exactly two global crops, no local ones),
    ``multi`` (two or more global crops and any number of local ones; SwAV, DINO) or ``one``
    (a single crop, the image its recipe parts are cut from: the pretext tasks)."""

    kind: Literal["one", "two", "multi"] = "two"

    def refusal(self, augment: AugmentConfig, method: str, multi_crop_methods: Sequence[str] = ()) -> str | None:
        """Why ``augment`` cannot make these views for ``method``; a two-view refusal names
        ``multi_crop_methods``, the ones that would take the views asked for."""
        if self.kind == "multi":
            if augment.global_crops < 2:
                return f"augment.global_crops: {method} predicts across global crops, needs at least 2"
            return None
        if self.kind == "one":
            if augment.num_views != 1:
                return (
                    f"augment.global_crops / augment.local_crops: {method} takes one view (1 global crop, 0 local); "
                    f"got {augment.global_crops} + {augment.local_crops}"
                )
            return None
        if augment.num_views != 2:
            return (
                f"augment.global_crops / augment.local_crops: {method} takes two views (2 global crops, 0 local); "
                f"got {augment.global_crops} + {augment.local_crops}"
            ) + (f". Multi-crop is for {', '.join(multi_crop_methods)}" if multi_crop_methods else "")
        return None


ONE_VIEW = Crops("one")
TWO_VIEWS = Crops("two")
MULTI_CROP = Crops("multi")


@dataclass(frozen=True)
class BatchRecipe:
    """A method's declared batch (its ``crops`` and ``parts``) with the views it is drawn by."""

    augment: AugmentConfig
    crops: Crops = TWO_VIEWS
    parts: tuple[RecipePart, ...] = ()

    @property
    def global_crops(self) -> int:
        return self.augment.global_crops

    @property
    def num_views(self) -> int:
        return self.augment.num_views

    def refusal(self, method: str, channels: int, multi_crop_methods: Sequence[str] = ()) -> str | None:
        """Why these views cannot make this method's batch (naming the field), or None."""
        problems = [self.crops.refusal(self.augment, method, multi_crop_methods)]
        problems += [part.refusal(self.augment, channels) for part in self.parts]
        return next((p for p in problems if p), None)

    def view_maker(self, channels: int, stage: Literal["all", "crop"] = "all", seed: int | None = None) -> ViewMaker:
        return ViewMaker(self.augment, channels, seed=seed, stage=stage, parts=self.parts)

    def columns(self) -> list[str]:
        return [f"view{i}" for i in range(self.num_views)] + [c for part in self.parts for c in part.columns]

    def to_batch(
        self,
        columns: dict[str, torch.Tensor],
        device: torch.device,
        *,
        device_views: DeviceViews | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        labels: bool = False,
    ) -> Batch:
        """A batch of Ray Data's columns on ``device``; ``device_views``: the colour stage,
        when it runs there; ``labels``: the method trains on the ``label`` column."""
        views = [columns[f"view{i}"].to(device, non_blocking=True) for i in range(self.num_views)]
        parts = {name: columns[name].to(device, non_blocking=True) for part in self.parts for name in part.columns}
        if device_views is not None:
            views = device_views(views)  # uint8 crops -> augmented floats in [0, 1]
            for part in self.parts:
                for name in part.image_columns:
                    parts[name] = device_views.colour(0, parts[name])
        views = [view.contiguous(memory_format=memory_format) for view in views]
        label = columns["label"].to(device, non_blocking=True) if labels else None
        return Batch(views=views, labels=label, parts=parts)

    def batch_of(
        self,
        images,
        channels: int,
        seed: int | None = None,
        labels: torch.Tensor | None = None,
        sample_index: torch.Tensor | None = None,
    ) -> Batch:
        """The batch of uint8 ``images`` (N, H, W[, C]) made here on the CPU, as training
        would get it with the whole recipe in Ray Data: for tests and benchmarks.
        ``sample_index``: the rows' places in the data (0..N-1 when not given)."""
        views, parts = self.view_maker(channels, seed=seed).make(images)
        given = {SAMPLE_INDEX: torch.arange(len(images)) if sample_index is None else sample_index}
        parts.update({name: given[name] for part in self.parts for name in part.source_columns})
        return Batch(views=views, labels=labels, parts=parts)
