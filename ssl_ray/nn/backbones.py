"""Encoders: torchvision ResNets with a small-image stem and a width knob, and small ViTs.

For 28-32 px images the ImageNet stem (7x7 stride-2 conv + max-pool) throws away most of the
image, so small-image SSL work (SimCLR appendix B.9, solo-learn, lightly) uses a 3x3 stride-1
first conv and no max-pool. ``width`` scales every stage (torchvision: 64-128-256-512), which
is what makes a CPU-sized encoder out of the same architecture; ``stem_stride=2`` halves the
resolution of every stage (a quarter of the compute) for encoders that trade detail for width.

ViTs (DINO's other backbone) come from timm, sized by name as in DeiT / DINO (tiny: 192-d,
3 heads; small: 384-d, 6 heads; 12 blocks), with the patch size a config field and position
embeddings interpolated to each crop's size, so multi-crop's local crops pass through too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ssl_ray.nn.colour_split import LabSplit, LuminanceOnly
from ssl_ray.nn.feature_maps import grid_patches, stage_feature_maps
from ssl_ray.nn.heads import hidden_layers

if TYPE_CHECKING:
    from ssl_ray.sections import ModelConfig

_ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class _ScaledResNet(ResNet):
    """torchvision's ResNet with every stage's width multiplied by ``width / 64``."""

    def __init__(self, block, layers, width: int) -> None:
        self._width = width
        super().__init__(block, list(layers))

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # first stage: its input is the stem, which we make ``width`` wide
            self.inplanes = self._width
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)


class ImageInput(nn.Module):
    """Maps uint8 images (0-255) or floats in [0, 1] to [-1, 1]; the data pipeline ships uint8,
    which is 4x less to move, and the exported encoder takes raw images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x.mul(2.0).sub_(1.0)


def build_backbone(
    name: str, in_channels: int, width: int = 64, blocks=None, stem_stride: int = 1, stem: str = "small"
) -> tuple[nn.Module, int]:
    """Returns the encoder (images (N, C, H, W) -> pooled features (N, D)) and D.

    ``stem="small"``: a 3x3 conv at ``stem_stride``, no max-pool (28-96 px images);
    ``stem="imagenet"``: torchvision's own 7x7 stride-2 conv and max-pool, a quarter of the
    resolution before the first stage (224 px images; ``stem_stride`` does not apply)."""
    if name not in _ARCHS:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(_ARCHS)}")
    block, default_blocks = _ARCHS[name]
    net = _ScaledResNet(block, blocks or default_blocks, width)
    if stem == "imagenet":
        net.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        net.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=stem_stride, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.bn1 = nn.BatchNorm2d(width)
    net.fc = nn.Identity()
    return nn.Sequential(ImageInput(), net), 8 * width * block.expansion


_VITS = {"vit_tiny": (192, 3), "vit_small": (384, 6)}  # embedding width, heads


def build_vit(
    name: str, in_channels: int, image_size: int, patch_size: int, depth: int = 12, pool: str = "token"
) -> tuple[nn.Module, int]:
    """A ViT (Dosovitskiy et al. 2021) whose output is the class token, or with ``pool="mean"``
    the mean of the patch tokens after the last norm, (N, D); any image size that is a multiple
    of ``patch_size`` passes (DINO's local crops)."""
    from timm.models.vision_transformer import VisionTransformer

    if name not in _VITS:
        raise ValueError(f"unknown ViT {name!r}; known: {', '.join(_VITS)}")
    width, heads = _VITS[name]
    vit = VisionTransformer(
        img_size=image_size,
        patch_size=patch_size,
        in_chans=in_channels,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        num_classes=0,
        dynamic_img_size=True,
        global_pool="avg" if pool == "mean" else "token",
        fc_norm=False,  # the norm before pooling either way: the same weights, either output
    )
    return nn.Sequential(ImageInput(), vit), width


def build_encoder(
    model: ModelConfig,
    in_channels: int,
    image_size: int,
    head: tuple[int, ...] = (),
    colour_split: str = "none",
    patch_grid: tuple[int, int] | None = None,
) -> tuple[nn.Module, int]:
    """The configured encoder and its feature width D (what every method and evaluation builds).
    ``head``: widths of Linear-BN-ReLU layers on the pooled features that belong to the encoder
    (SimCLR v2 keeps its projector's first layer, ``PipelineConfig.encoder_head``); they come
    last in the same ``nn.Sequential``, so an encoder without them has the same weights' names.
    ``colour_split="lab"``: CMC's L and ab halves, each a backbone of half ``model.width``
    (``PipelineConfig.colour_split``); ``"luminance"``: the L channel alone, of the full width
    (colourisation's encoder). ``patch_grid=(patch, stride)``: the encoder averages its
    features over the image's grid of patches (``PatchGridPool``, CPC v2's)."""
    if colour_split == "lab":
        half = max(1, model.width // 2)
        luminance, l_dim = build_backbone(model.backbone, 1, half, model.blocks, model.stem_stride, model.stem)
        chroma, ab_dim = build_backbone(model.backbone, 2, half, model.blocks, model.stem_stride, model.stem)
        encoder, dim = LabSplit(luminance, l_dim, chroma, ab_dim), l_dim + ab_dim
    elif colour_split == "luminance":
        luminance, dim = build_backbone(model.backbone, 1, model.width, model.blocks, model.stem_stride, model.stem)
        encoder = LuminanceOnly(luminance)
    elif model.backbone.startswith("vit"):
        encoder, dim = build_vit(
            model.backbone, in_channels, image_size, model.patch_size, model.vit_depth, model.vit_pool
        )
    else:
        encoder, dim = build_backbone(
            model.backbone, in_channels, model.width, model.blocks, model.stem_stride, model.stem
        )
    if patch_grid is not None:
        encoder = PatchGridPool(encoder, *patch_grid)
    if not head:
        return encoder, dim
    layers = [*encoder] if isinstance(encoder, nn.Sequential) else [encoder]
    return nn.Sequential(*layers, hidden_layers([dim, *head])), head[-1]


class PatchGridPool(nn.Module):
    """Images (N, C, H, W) -> the mean of ``encoder``'s features (N, D) over their grid of
    ``patch`` px patches ``stride`` px apart, each encoded alone: the representation of an
    encoder trained on patches (CPC v2, Hénaff et al. 2020, Sec. 4.2: the patch features
    pooled over the grid), which sees in evaluation what it saw in training."""

    def __init__(self, encoder: nn.Module, patch: int, stride: int) -> None:
        super().__init__()
        self.encoder, self.patch, self.stride = encoder, patch, stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dense_map(images).mean(dim=(2, 3))

    def dense_map(self, images: torch.Tensor) -> torch.Tensor:
        """Each patch's features where the patch sits in the grid (N, D, g_h, g_w)."""
        patches = grid_patches(images, self.patch, self.stride)
        features = self.encoder(patches.flatten(0, 1))
        g_h = (images.shape[-2] - self.patch) // self.stride + 1
        return features.view(images.shape[0], g_h, -1, features.shape[-1]).permute(0, 3, 1, 2)


def dense_map(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The encoder's features before pooling, (N, D, h, w), from the same weights as its
    pooled ones (what a dense head reads): a ResNet's last stage, a ViT's patch tokens after
    its last norm laid out on their grid, an encoder of patches' per-patch features (CPC v2),
    the L and ab halves' maps side by side (CMC), the L channel's (colorization). Head layers
    an encoder keeps (SimCLR v2's) act on pooled features and are left out."""
    if hasattr(encoder, "dense_map"):
        return encoder.dense_map(images)
    image_input, net = encoder[0], encoder[1]
    if isinstance(net, ResNet):
        return stage_feature_maps(encoder, images)[-1]  # reads encoder[0] and [1] only
    tokens = net.forward_features(image_input(images))[:, net.num_prefix_tokens :]  # a timm ViT
    grid_h = images.shape[-2] // net.patch_embed.patch_size[0]
    return tokens.reshape(len(images), grid_h, -1, tokens.shape[-1]).permute(0, 3, 1, 2)
