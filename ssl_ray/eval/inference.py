"""Features of a frozen encoder over a whole dataset, by Ray Data batch inference.

A pool of actors each holds the encoder once (on a GPU where the cluster has them) and maps
image batches to feature batches; the features come back to the driver as one array, which
the protocols then reuse (kNN at several k, the linear probe's search, the diagnostics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import ray.data
import torch
from torch import nn

from ssl_ray.monitors.features import as_nchw, pixels_as_features
from ssl_ray.nn.backbones import build_encoder
from ssl_ray.nn.precision import autocast, resolve_precision
from ssl_ray.sections import ModelConfig

if TYPE_CHECKING:
    from ssl_ray.config import PipelineConfig


@dataclass(frozen=True)
class EncoderSpec:
    """How to build an encoder inside an actor (small to ship: weights travel once, by reference).

    ``kind``: "weights" (a trained backbone's ``state``), "random" (the same architecture at its
    seeded initialisation: the random-init baseline) or "pixels" (flattened pixels in [-1, 1])."""

    kind: Literal["weights", "random", "pixels"]
    model: ModelConfig
    channels: int
    state: dict[str, torch.Tensor] | None = None
    seed: int = 0
    image_size: int = 28  # what a ViT's position embeddings are sized for
    head: tuple[int, ...] = ()  # head layers the encoder keeps (``PipelineConfig.encoder_head``)
    colour_split: str = "none"  # ``PipelineConfig.colour_split``
    patch_grid: tuple[int, int] | None = None  # ``PipelineConfig.patch_grid``

    @classmethod
    def of(cls, kind: str, config: PipelineConfig, state: dict[str, torch.Tensor] | None = None) -> EncoderSpec:
        """The spec of ``config``'s encoder (its kept head layers too); "random" is seeded by
        ``train.seed``, the pretraining's own start."""
        return cls(
            kind,
            config.model,
            config.data.channels,
            state,
            seed=config.train.seed if kind == "random" else 0,
            image_size=config.augment.image_size,
            head=config.encoder_head,
            colour_split=config.colour_split,
            patch_grid=config.patch_grid,
        )

    def build(self) -> nn.Module:
        if self.kind == "pixels":
            return pixels_as_features()
        torch.manual_seed(self.seed)
        encoder, _ = build_encoder(
            self.model, self.channels, self.image_size, self.head, self.colour_split, self.patch_grid
        )
        if self.kind == "weights":
            encoder.load_state_dict(self.state)
        return encoder


class EmbedImages:
    """The ``map_batches`` callable: one per actor, the encoder built once in ``__init__``."""

    def __init__(self, spec: EncoderSpec, use_gpu: bool, precision: str = "auto") -> None:
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.encoder = spec.build().to(self.device).eval()
        self.precision = "fp32" if spec.kind == "pixels" else resolve_precision(precision, self.device)
        if not use_gpu:
            torch.set_num_threads(1)  # one actor per CPU

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        # Ray hands zero-copy, read-only arrays; torch warns on those, so copy (uint8: cheap) when read-only.
        images = as_nchw(torch.from_numpy(np.require(batch["image"], requirements=["C", "W"])).to(self.device))
        with autocast(self.precision, self.device):
            features = self.encoder(images).float()
        passed = {k: v for k, v in batch.items() if k != "image"}  # labels, and which split a row is from
        return {"feature": features.cpu().numpy(), **passed}


def embed(
    datasets: dict[str, ray.data.Dataset], spec: EncoderSpec, use_gpu: bool, actors: int, batch_size: int = 512
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (features (N, D) float32, labels (N,))}`` for every row of each dataset, in no
    fixed order (the protocols need features and labels paired, not ordered). One pass over
    all of them, so the actors (and the encoder's weights) are set up once."""
    names = list(datasets)
    tagged = [
        ds.map_batches(_tag_split, fn_kwargs={"split": i}, batch_format="numpy", batch_size=None)
        for i, ds in enumerate(datasets.values())
    ]
    combined = tagged[0].union(*tagged[1:]) if len(tagged) > 1 else tagged[0]
    features = combined.map_batches(
        EmbedImages,
        fn_constructor_kwargs={"spec": spec, "use_gpu": use_gpu},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0,
        num_cpus=0 if use_gpu else 1,
    )
    parts = list(features.iter_batches(batch_size=None, batch_format="numpy"))
    out = {}
    for i, name in enumerate(names):
        chosen = [(p["feature"][p["split"] == i], p["label"][p["split"] == i]) for p in parts]
        chosen = [c for c in chosen if len(c[1])]
        if not chosen:
            raise ValueError(f"no images to embed in the {name} set")
        out[name] = (np.concatenate([f for f, _ in chosen]), np.concatenate([y for _, y in chosen]))
    return out


def _tag_split(batch: dict[str, np.ndarray], split: int) -> dict[str, np.ndarray]:
    return {**batch, "split": np.full(len(batch["label"]), split, dtype=np.int8)}
