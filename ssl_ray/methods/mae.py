"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners",
https://arxiv.org/abs/2111.06377): 75% of an image's patches hidden at random per image, the
ViT encoder run on the visible patches only, a light decoder given the encoded patches and a
shared mask token at every hidden position (with positions), and the loss the mean squared
error on the hidden patches' pixels, each patch normalised by its own mean and variance
(Sec. 3, "Reconstruction target": the better representation).

As the paper: uniform per-image masks (``nn.masking.random_masks``), the class token through
the encoder, the decoder's fixed 2-D sine-cosine positions, a linear projection to the decoder
and a linear prediction of each patch's pixels; crop and flip only (the pipelines). Deviations:
the decoder is 2 blocks of 128-d (the paper's 8 x 512; its Table 1a-b finds depth and width
matter little for fine-tuning); the encoder's positions are timm's learned ones, not fixed.
The representation kept is the mean of the encoder's patch tokens (``model.vit_pool: mean``,
the paper's fine-tuning default), since no loss reaches the class token.
"""

from __future__ import annotations

import torch
from pydantic import Field
from timm.models.vision_transformer import Block
from torch import nn

from ssl_ray.methods.base import SSLMethod, vit_refusal
from ssl_ray.methods.params import MethodParams
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.feature_maps import unit_pixels
from ssl_ray.nn.losses import MaskedPatchLoss
from ssl_ray.nn.masking import random_masks
from ssl_ray.nn.vit_tokens import patch_embeddings, patchify, sincos_positions, transformer, with_positions
from ssl_ray.views.recipe import ONE_VIEW, Batch


@register_method("mae")
class MAE(SSLMethod):
    crops = ONE_VIEW

    class Params(MethodParams):
        mask_ratio: float = Field(default=0.75, gt=0.0, lt=1.0)
        decoder_dim: int = Field(default=128, gt=0, multiple_of=4)
        decoder_depth: int = Field(default=2, ge=1)
        decoder_heads: int = Field(default=4, ge=1)
        # Each target patch normalised by its pixels' mean and variance (the paper's better one).
        norm_pixel_loss: bool = True

    @classmethod
    def model_refusal(cls, params, model) -> str | None:
        return vit_refusal(cls.name, "encodes the visible patches with a ViT", model)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        vit = encoder[1]
        self.patch = vit.patch_embed.patch_size[0]
        channels = vit.patch_embed.proj.in_channels
        self.decoder_embed = nn.Linear(feature_dim, params.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, params.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)  # the reference code's init
        self.decoder = nn.Sequential(
            *[Block(params.decoder_dim, params.decoder_heads, qkv_bias=True) for _ in range(params.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(params.decoder_dim)
        self.decoder_pred = nn.Linear(params.decoder_dim, self.patch * self.patch * channels)
        self.criterion = MaskedPatchLoss(params.norm_pixel_loss)

    def encode_visible(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(encoded class and visible tokens (N, 1 + K, D), visible indices (N, K), mask (N, L),
        grid (h, w)) of images under a fresh random mask."""
        patches = patch_embeddings(self.backbone, images)
        n, h, w, _ = patches.shape
        tokens = with_positions(self.backbone, patches)
        cls, grid = tokens[:, :1], tokens[:, 1:]
        visible, mask = random_masks(n, h * w, self.params.mask_ratio, device=images.device)
        kept = torch.gather(grid, 1, visible[..., None].expand(-1, -1, grid.shape[-1]))
        return transformer(self.backbone, torch.cat([cls, kept], dim=1)), visible, mask, (h, w)

    def decode(self, encoded: torch.Tensor, visible: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Every patch's predicted pixels (N, L, p * p * C): the visible ones' encodings and the
        mask token elsewhere, with positions, through the decoder."""
        x = self.decoder_embed(encoded)
        n, length = x.shape[0], grid[0] * grid[1]
        full = self.mask_token.to(x.dtype).expand(n, length, -1).clone()
        full.scatter_(1, visible[..., None].expand(-1, -1, x.shape[-1]), x[:, 1:])
        positions = sincos_positions(*grid, x.shape[-1]).to(x.device, x.dtype)
        tokens = torch.cat([x[:, :1], full + positions], dim=1)  # the class token's position: 0
        return self.decoder_pred(self.decoder_norm(self.decoder(tokens)))[:, 1:]

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        images = batch.views[0]
        encoded, visible, mask, grid = self.encode_visible(images)
        loss = self.criterion(self.decode(encoded, visible, grid), patchify(unit_pixels(images), self.patch), mask)
        return {"loss": loss, "embedding": encoded[:, 1:].mean(dim=1).detach()}
