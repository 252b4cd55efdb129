"""Each method's own hyperparameters (``method.*`` in a pipeline), with its paper's defaults.

A method declares ``Params``: a frozen pydantic model built from the groups below, overriding
the defaults its paper uses. ``method: {name: swav, ...}`` is validated against SwAV's params
only, so a field another method reads (``method.queue_size`` for SimCLR) is an unknown field
rather than silently ignored, and adding a method never touches the config module. The parsed
config keeps them as that typed object (``config.method.num_prototypes``), which is what the
method is built from.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from ssl_ray.strict import NoBoolNumbers


class MethodParams(NoBoolNumbers):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The registered method these are the parameters of (``method.name``).
    name: str


class Projector(MethodParams):
    projection_hidden_dim: int = Field(default=512, gt=0)
    projection_dim: int = Field(default=128, gt=0)


class Predictor(MethodParams):
    # Predictor MLP hidden width (BYOL, SimSiam's bottleneck, MoCo v3).
    predictor_hidden_dim: int = Field(default=512, gt=0)


class Temperature(MethodParams):
    temperature: float = Field(default=0.2, gt=0.0)


class MomentumTarget(MethodParams):
    # The EMA target's momentum at step 0; BYOL, MoCo v3 and DINO raise it along a cosine to 1
    # by the last step, MoCo v1/v2 keep it constant.
    ema_momentum: float = Field(default=0.99, ge=0.0, le=1.0)


class Labelled(MethodParams):
    # Methods trained on labels with a classifier: its classes; None = the data's.
    num_classes: int | None = Field(default=None, gt=1)


class TileParams(MethodParams):
    """The pretext tasks on tiles of an image (Jigsaw, relative location, PIRL): encoded one by
    one, fused late (``nn.heads.TileFusion``)."""

    # A tile's side as a fraction of its cell's: the rest is the gap and the jitter.
    tile_fraction: float = Field(default=0.85, gt=0.0, le=1.0)
    # Each tile's features projected to this (the papers' per-tile fc6) ...
    tile_dim: int = Field(default=128, gt=0)
    # ... and the concatenation through a hidden layer this wide (their fc7).
    hidden_dim: int = Field(default=512, gt=0)


class PerSample(MethodParams):
    """Methods that keep something per training image (PIRL's memory bank)."""

    # The training set's size: the rows of that memory. None: the data's, set before any
    # worker starts (``train.trainer``), as ``num_classes`` is for a labelled method.
    num_samples: int | None = Field(default=None, gt=0)
