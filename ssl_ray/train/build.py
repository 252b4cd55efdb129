"""The configured method, built from what it needs: its own parameters, the encoder the
shared factory makes (with its feature size) and its batch recipe. The one place a
``PipelineConfig`` becomes a method; the method itself never sees the config."""

from __future__ import annotations

from ssl_ray.config import PipelineConfig
from ssl_ray.methods import method_class
from ssl_ray.methods.base import SSLMethod
from ssl_ray.nn.backbones import build_encoder


def build_method(config: PipelineConfig) -> SSLMethod:
    encoder, feature_dim = build_encoder(
        config.model,
        config.data.channels,
        config.augment.image_size,
        config.encoder_head,
        config.colour_split,
        config.patch_grid,
    )
    return method_class(config.method.name)(config.method, encoder, feature_dim, config.batch_recipe)
