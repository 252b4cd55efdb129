"""The sections of a pipeline config (``data``, ``augment``, ``model``, ...), each a frozen,
strictly typed model with its defaults; ``ssl_ray.config`` assembles them with the method's
own parameters into a ``PipelineConfig``. They live below every layer that reads them (the
encoder factory, the view recipes, the data sources), so none of those imports the whole
pipeline config, and the config can know the methods without a cycle.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import ConfigDict, Field, field_validator, model_validator

from ssl_ray.strict import NoBoolNumbers

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class Section(NoBoolNumbers):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_location(value: str, field: str) -> str:
    """Local paths must exist (and become absolute); URLs are checked when listed, at start."""
    if re.match(r"^(https?|s3)://", value):
        return value
    if not value:
        raise ValueError(f"{field} is empty")
    if "://" in value:
        raise ValueError(f"unsupported scheme in {value!r}: use a local path, s3://bucket/prefix or http(s)://")
    if not Path(value).expanduser().exists():
        raise ValueError(f"does not exist: {value}")
    return str(Path(value).expanduser().resolve())


class DataConfig(Section):
    """Where the images come from.

    - ``fashion_mnist``: ``path`` is a directory or http(s) URL holding the four IDX files
      (plain or gzipped); the kNN monitor queries its test split.
    - ``images``: ``path`` is a folder or ``s3://bucket/prefix`` of image files (JPEG, PNG,
      WebP, ...); when every file sits in a sub-folder, the sub-folders are the classes.
    - ``parquet``: ``path`` is a folder or prefix of Parquet shards (or one file) with encoded
      image bytes in ``image_column`` and, optionally, integer labels in ``label_column``;
      ``ssl-ray prepare`` writes them.
    """

    source: Literal["fashion_mnist", "images", "parquet"] = "fashion_mnist"
    path: str = Field(default_factory=lambda: os.environ.get("SSL_RAY_FASHION_MNIST", DEFAULT_FASHION_MNIST_DIR))
    # Labelled held-out images (same kind as ``path``) the kNN monitor queries; ``images`` and
    # ``parquet`` sources without one skip the kNN monitor.
    val_path: str | None = None
    # What ``val_path`` holds, when it differs from ``source`` (loose images vs shards).
    val_source: Literal["images", "parquet"] | None = None
    image_column: str = "image"
    label_column: str | None = "label"
    # Decoded images are resized (shorter side) and centre-cropped to this square, then the
    # view recipe crops from it; None = ``augment.image_size``.
    decode_size: int | None = Field(default=None, ge=8)
    # Pretrain on N training images (None = all): a class-stratified sample drawn with
    # ``train.seed``. The kNN bank is sampled on its own (``eval.knn_bank_size``).
    train_subset: int | None = Field(default=None, gt=0)
    # Train on a class-balanced share of the labelled training images, drawn with
    # ``label_seed`` (the same images for the same seed): few-label fine-tuning's 1% / 10%.
    label_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    label_seed: int = 0
    channels: Literal[1, 3] = 1

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str) -> str:
        return _check_location(value, "data path")

    @field_validator("val_path")
    @classmethod
    def _val_path_exists(cls, value: str | None) -> str | None:
        return None if value is None else _check_location(value, "val path")

    @model_validator(mode="after")
    def _source_fits_path(self) -> DataConfig:
        if self.source == "fashion_mnist":
            if self.path.startswith("s3://"):
                raise ValueError(
                    "data.path: fashion_mnist reads a directory or an http(s) URL; for s3:// use "
                    "ssl-ray prepare to write Parquet shards there and source: parquet"
                )
            if self.val_path is not None:
                raise ValueError("data.val_path: fashion_mnist queries its own test split")
        elif self.path.startswith(("http://", "https://")):
            raise ValueError(f"data.path: the {self.source} source reads a local folder or s3://, not http(s)")
        return self


class StorageConfig(Section):
    """Where the object store is; never credentials (those come from the AWS chain: environment,
    profile, instance role). Applies to every ``s3://`` URL: data and checkpoints."""

    # An S3-compatible endpoint (MinIO, Ceph, R2, ...); None = AWS, or $AWS_ENDPOINT_URL.
    endpoint_url: str | None = None
    region: str | None = None

    @field_validator("endpoint_url")
    @classmethod
    def _plain_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"expected http(s)://host[:port], got {value!r}")
        if parsed.username or parsed.password:
            raise ValueError("credentials never go in a config: use the AWS environment or profile")
        return value.rstrip("/")


PerView = float | tuple[float, float]


class AugmentConfig(Section):
    """The SimCLR view recipe; ``strength`` scales the colour jitter (SimCLR appendix A).

    ``blur_p`` and ``solarize_p`` take one probability for both views or a pair, one per view:
    BYOL's asymmetric recipe is ``blur_p: [1.0, 0.1]``, ``solarize_p: [0.0, 0.2]``.

    Multi-crop (SwAV, Caron et al. 2020, Sec. 3.2; DINO): ``global_crops`` views at
    ``image_size`` from ``crop_scale``, then ``local_crops`` smaller views at
    ``local_image_size`` from ``local_crop_scale``. Local crops take view 0's colour recipe,
    with ``local_blur_p`` when set. The views reach the method global crops first.
    """

    image_size: int = Field(default=28, ge=8)
    strength: float = Field(default=0.5, ge=0.0, le=2.0)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_p: float = Field(default=0.5, ge=0.0, le=1.0)
    jitter_p: float = Field(default=0.8, ge=0.0, le=1.0)
    # Colour images turned gray (SimCLR's 0.2); 0 for CMC, whose ab view a gray image empties.
    grayscale_p: float = Field(default=0.2, ge=0.0, le=1.0)
    blur_p: PerView = 0.0
    solarize_p: PerView = 0.0
    # Where the colour part of the recipe (flip, jitter, grayscale, blur, solarize) runs:
    # device = batched on the training device (the GPU), Ray Data only decodes and crops;
    # ray_data = all of it in Ray Data's CPU tasks; auto = device when training on GPUs.
    on: Literal["auto", "ray_data", "device"] = "auto"
    global_crops: int = Field(default=2, ge=1)
    local_crops: int = Field(default=0, ge=0)
    local_image_size: int = Field(default=12, ge=4)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    local_blur_p: float | None = Field(default=None, ge=0.0, le=1.0)

    @property
    def num_views(self) -> int:
        return self.global_crops + self.local_crops

    def view_size(self, view: int) -> int:
        return self.image_size if view < self.global_crops else self.local_image_size

    def view_crop_scale(self, view: int) -> tuple[float, float]:
        return self.crop_scale if view < self.global_crops else self.local_crop_scale

    @model_validator(mode="after")
    def _local_smaller(self) -> AugmentConfig:
        if self.local_crops and self.local_image_size >= self.image_size:
            raise ValueError(
                f"augment.local_image_size ({self.local_image_size}) must be below augment.image_size "
                f"({self.image_size}): local crops are the small ones"
            )
        return self

    @field_validator("blur_p", "solarize_p")
    @classmethod
    def _probabilities(cls, value: PerView) -> PerView:
        values = value if isinstance(value, tuple) else (value,)
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"probabilities must be in [0, 1], got {value}")
        return value

    def for_view(self, field: str, view: int) -> float:
        """A per-view field's value for view ``view``: global crops 0 and 1 take their own
        entry of a pair (later global crops the second), local crops view 0's."""
        if view >= self.global_crops:
            if field == "blur_p" and self.local_blur_p is not None:
                return self.local_blur_p
            view = 0
        value = getattr(self, field)
        return value[min(view, 1)] if isinstance(value, tuple) else value

    @field_validator("crop_scale", "local_crop_scale")
    @classmethod
    def _ordered_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"need 0 < low <= high <= 1, got {list(value)}")
        return value


class ModelConfig(Section):
    backbone: Literal["resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small"] = "resnet18"
    # Channels of the first stage; torchvision's ResNets use 64. Narrower is for CPU demos.
    width: int = Field(default=64, ge=4)
    # Residual blocks per stage; None = the named ResNet's own (2,2,2,2 for ResNet-18).
    blocks: tuple[int, int, int, int] | None = None
    # small: a 3x3 conv and no max-pool, for 28-96 px images; imagenet: torchvision's 7x7
    # stride-2 conv and max-pool, for 224 px (a 16x cheaper first stage there).
    stem: Literal["small", "imagenet"] = "small"
    # The small stem's stride. 1: full resolution in the first stage; 2: half resolution.
    stem_stride: Literal[1, 2] = 1
    # ViTs: the patch side in pixels (every crop size must be a multiple of it), and blocks.
    patch_size: int = Field(default=4, ge=1)
    vit_depth: int = Field(default=12, ge=1)
    # What a ViT's features are: its class token (ViT, DINO) or the mean of its patch tokens
    # after the last norm (MAE's fine-tuning and probing, whose class token no loss reaches).
    vit_pool: Literal["token", "mean"] = "token"
    # Widths of Linear-BN-ReLU layers on the pooled features that are part of the encoder: kept,
    # evaluated, exported and fine-tuned with it. None: what the method keeps of its head
    # (SimCLR v2: its projector's first layer; every other method: nothing). A fine-tuning or
    # distillation run of such an encoder carries the widths here.
    encoder_head: tuple[Annotated[int, Field(gt=0)], ...] | None = None
    # "lab": the encoder converts RGB to CIE Lab and encodes L and ab apart, each with a backbone
    # of half the width, their features concatenated (CMC's encoder); "luminance": it encodes
    # the L channel alone (colourisation's). None: what the method declares (CMC: lab;
    # colorization: luminance; every other method: none). Fine-tuning runs carry it here.
    colour_split: Literal["none", "lab", "luminance"] | None = None
    # (patch, stride) in pixels: the encoder cuts the image into that grid of overlapping
    # patches, encodes each on its own and averages their features (CPC v2's encoder). None:
    # what the method declares (CPC v2: its patches; every other method: the whole image).
    # Fine-tuning runs carry it here.
    patch_grid: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None


class OptimConfig(Section):
    name: Literal["sgd", "lars", "adamw"] = "sgd"
    # Learning rate for a global batch of 256, scaled by ``lr_scaling`` to the real batch.
    base_lr: float = Field(default=0.3, gt=0.0)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    weight_decay: float = Field(default=5e-4, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    warmup_epochs: float = Field(default=1.0, ge=0.0)
    final_lr_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    # AdamW's (beta1, beta2); MAE and BEiT train with beta2 0.95 (He et al. 2022, Table 8).
    adam_betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    # Clip the global gradient norm to this value before each step (None = no clipping).
    grad_clip_norm: float | None = Field(default=None, gt=0.0)


class TrainConfig(Section):
    epochs: int = Field(default=10, gt=0)
    # Global batch: split evenly over the workers.
    batch_size: int = Field(default=256, gt=0)
    num_workers: int = Field(default=1, gt=0)
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    # torch intra-op threads in each worker; None = the worker's CPU share, at least 1.
    threads_per_worker: int | None = Field(default=None, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Weights and images in NHWC (channels_last); auto: on GPUs, where bf16 convolutions run
    # 2.2-2.5x faster in it (benchmarks/README.md, train_throughput.py); NCHW on CPUs.
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    # Synchronised BatchNorm across GPU workers (statistics over the global batch, as SimCLR,
    # BYOL, SimSiam and MoCo v3 train); auto: on for those methods with several GPU workers.
    # MoCo v1/v2 shuffle BN across workers instead. Needs GPUs (torch's SyncBatchNorm).
    sync_batchnorm: bool | Literal["auto"] = "auto"
    # torch.compile the encoders (first steps slower while it compiles; pays off on GPUs).
    compile: bool = False
    # A step whose loss or gradient is NaN/inf is skipped (weights and optimiser untouched);
    # this many in a row stop the run with an error rather than train on garbage.
    max_nonfinite_steps: int = Field(default=20, gt=0)
    seed: int = 0
    # Where Ray Train writes checkpoints: a local folder or a URI (s3://...).
    storage_path: str = "ray_results"
    # Runs are named ``<run_name>-<timestamp>``; ``--resume`` picks the newest of that prefix.
    run_name: str | None = None
    checkpoint_every_epochs: int = Field(default=1, gt=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    # Log the step loss to MLflow every N optimiser steps (per-epoch metrics are always logged).
    log_every_steps: int = Field(default=10, gt=0)
    # Stop after this many optimiser steps per epoch (None = the whole epoch); for smoke tests.
    max_steps_per_epoch: int | None = Field(default=None, gt=0)
    # What a method fits once before epoch 1 (BEiT's tokenizer, colorization's rebalancing
    # weights), taken from an earlier run instead of fitted again: that run's MLflow id (its
    # ``fitted/<method>_before_epoch_1.pt``) or such a file. Sweep trials then share one fit.
    fitted_from: str | None = None

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("use letters, digits, '-', '_' and '.' only")
        return value


class EvalConfig(Section):
    knn_k: int = Field(default=200, gt=0)
    knn_temperature: float = Field(default=0.07, gt=0.0)
    # Run the kNN monitor every N epochs (and always after the last one); 0 = only at the end.
    knn_every_epochs: int = Field(default=1, ge=0)
    # Memory bank: N labelled training images (None = all); queries: N test images. Both
    # class-stratified samples drawn with ``train.seed``. ``knn_k`` is clipped to the bank's
    # smallest class (with a warning).
    knn_bank_size: int | None = Field(default=None, gt=0)
    knn_query_size: int | None = Field(default=None, gt=0)
    # Before training: the kNN of the random-init encoder, and of raw pixels as a baseline.
    knn_at_init: bool = True
    knn_raw_pixels: bool = True
    # After the last epoch, the linear probe on the frozen encoder (``ssl-ray evaluate``'s,
    # on the kNN bank's and queries' images), into the run: on in the full recipes.
    linear_probe_at_end: bool = False


class TrackingConfig(Section):
    # None: MLFLOW_TRACKING_URI if set, else a SQLite file in the working directory.
    tracking_uri: str | None = None
    experiment: str = "ssl-ray"
    # The trained encoder is registered as a version of this MLflow model (None: "<run name
    # prefix>-encoder"); sweep trials log no model (evaluate the best one by its run id).
    registered_model: str | None = None
    # False: no MLflow model and no registry version at the end of the run; its encoder stays
    # the run's ``encoder/encoder.pt`` artifact, which ``ssl-ray evaluate RUN_ID`` reads (for
    # smoke runs and studies whose encoders are not meant for the registry).
    register_model: bool = True

    @model_validator(mode="after")
    def _a_name_needs_a_model(self) -> TrackingConfig:
        if self.registered_model and not self.register_model:
            raise ValueError(
                f"tracking.registered_model ({self.registered_model!r}) names a model that "
                "tracking.register_model=false does not log: set one or the other"
            )
        return self
