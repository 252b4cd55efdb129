"""A memory bank: one representation per training image, an exponential moving average of what
the encoder made of it at each visit (Wu et al. 2018, Sec. 3.2, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination"; PIRL, Misra & van der Maaten 2020,
Sec. 3.2, with momentum 0.5).

Rows are indexed by each image's ``sample_index`` (its place in the training selection,
``views.parts.SAMPLE_INDEX``). Updates are gathered from every worker first, so all workers
hold the same bank; the bank is a buffer, so it is checkpointed with the method and a resumed
run continues from the memories it had.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_ray.nn.distributed import gather_no_grad


class MemoryBank(nn.Module):
    def __init__(self, size: int, dim: int, momentum: float) -> None:
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"memory bank size and dim must be > 0, got size={size}, dim={dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"memory bank momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        # Random unit vectors until an image's first visit writes its own (as NPID starts).
        self.register_buffer("memory", F.normalize(torch.randn(size, dim), dim=1))

    @property
    def size(self) -> int:
        return self.memory.shape[0]

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.memory[indices].clone()

    def sample(self, count: int) -> torch.Tensor:
        """``count`` memories drawn uniformly with replacement: the negatives of NCE."""
        return self.memory[torch.randint(0, self.size, (count,), device=self.memory.device)].clone()

    @torch.no_grad()
    def update(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        """``m_i <- normalise(momentum * m_i + (1 - momentum) * f_i)`` for every worker's rows
        (PIRL Sec. 3.2; the renormalisation is NPID's: memories stay on the unit sphere).
        Momentum 1 holds the bank still (a test's fixed target, as DINO's EMA of 1)."""
        indices = gather_no_grad(indices.to(self.memory.device))
        features = gather_no_grad(features.detach().to(self.memory.dtype))
        if indices.device.type == "cpu":
            if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < self.size):
                raise IndexError(
                    f"sample indices {int(indices.min())}..{int(indices.max())} outside the bank's {self.size} rows"
                )
        else:  # checked on the device: reading the range back would stall every step on a sync
            torch._assert_async(((indices >= 0) & (indices < self.size)).all())
        mixed = self.momentum * self.memory[indices] + (1.0 - self.momentum) * features
        self.memory[indices] = F.normalize(mixed, dim=1)
