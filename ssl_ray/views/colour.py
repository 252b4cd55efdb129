"""Per-sample colour jitter as one affine colour map per image.

Brightness, contrast, saturation and hue are each linear in RGB: brightness scales, saturation
blends with the luma, contrast blends with the image's mean luma, and a hue shift is a rotation
of the chroma plane about the grey axis (done in YIQ space, as NVIDIA DALI's hue operator
does, instead of a round trip through HSV). So the four, in any order, compose into one 3x3
matrix and offset per image, applied to the whole batch with one batched matrix product.

Why not kornia's ColorJitter: at 224 px its HSV round trip costs ~9.5 ms per RGB image on one
core, three quarters of a view's whole recipe (benchmarks/README.md). Two differences from
torchvision's semantics, both deliberate: the result is clamped to [0, 1] once at the end rather
than after each step, and the hue shift is the YIQ rotation (the same direction and size of
shift, but it keeps luma and chroma where HSV keeps value and saturation).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# ITU-R BT.601 luma weights; the Y row of RGB -> YIQ.
LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


class RandomColourJitter(nn.Module):
    """With probability ``p`` per image: brightness factor in [1-b, 1+b], contrast in
    [1-c, 1+c], saturation in [1-s, 1+s], hue shift in [-h, h] of a full turn, applied in a
    random order (one order per batch, as torchvision draws one per call). Input and output:
    (N, C, H, W) floats in [0, 1]; with C = 1 only brightness and contrast apply."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.ranges = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
        self.p = p
        self.register_buffer("luma", torch.tensor(LUMA), persistent=False)
        self.register_buffer("to_yiq", _RGB_TO_YIQ.clone(), persistent=False)
        self.register_buffer("from_yiq", torch.linalg.inv(_RGB_TO_YIQ), persistent=False)

    def _draw(self, name: str, n: int, device) -> torch.Tensor:
        """Per-image factors: 1 +- the range (a hue shift: 0 +- the range, in turns)."""
        centre = 0.0 if name == "hue" else 1.0
        return centre + (torch.rand(n, device=device) * 2.0 - 1.0) * self.ranges[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, channels = x.shape[:2]
        if channels not in (1, 3):
            raise ValueError(f"expected 1 or 3 channels, got {channels}")
        device = x.device
        eye = torch.eye(channels, device=device)
        matrix = eye.expand(n, channels, channels).clone()  # the map so far: x -> matrix @ x + offset
        offset = torch.zeros(n, channels, 1, device=device)
        mean = x.mean(dim=(2, 3)).unsqueeze(-1)  # (N, C, 1): what contrast needs, mapped below
        luma = self.luma.view(1, 1, 3) if channels == 3 else torch.ones(1, 1, 1, device=device)
        names = ["brightness", "contrast"] + (["saturation", "hue"] if channels == 3 else [])
        for index in torch.randperm(len(names)).tolist():
            name = names[index]
            if not self.ranges[name]:
                continue
            if name == "brightness":
                factor = self._draw(name, n, device).view(n, 1, 1)
                matrix, offset = factor * matrix, factor * offset
            elif name == "contrast":
                factor = self._draw(name, n, device).view(n, 1, 1)
                grey = luma @ (matrix @ mean + offset)  # (N, 1, 1): mean luma of the image so far
                matrix, offset = factor * matrix, factor * offset + (1.0 - factor) * grey
            elif name == "saturation":
                factor = self._draw(name, n, device).view(n, 1, 1)
                to_grey = luma.expand(n, 3, 3)  # every output channel = luma . rgb
                blend = factor * eye + (1.0 - factor) * to_grey
                matrix, offset = blend @ matrix, blend @ offset
            else:
                # Negative: the YIQ rotation that turns hue the same way as HSV (red -> yellow).
                angle = -self._draw(name, n, device) * 2.0 * math.pi
                cos, sin = angle.cos(), angle.sin()
                rotation = torch.zeros(n, 3, 3, device=device)
                rotation[:, 0, 0] = 1.0
                rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
                rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
                hue = self.from_yiq @ rotation @ self.to_yiq
                matrix, offset = hue @ matrix, hue @ offset
        keep = torch.rand(n, device=device) >= self.p  # images the jitter skips
        matrix[keep] = eye
        offset[keep] = 0.0
        flat = x.reshape(n, channels, -1)
        out = torch.baddbmm(offset, matrix.to(x.dtype), flat) if x.dtype == matrix.dtype else matrix @ flat + offset
        return out.clamp_(0.0, 1.0).view_as(x)
