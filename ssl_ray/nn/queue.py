"""MoCo's dictionary: a FIFO queue of the last K keys (He et al. 2020, Sec. 3.1).

Keys from every worker are gathered before they enter, so all workers hold the same queue.
The queue and its write position are buffers, so they are checkpointed with the method and a
resumed run continues with the same negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_ray.nn.distributed import gather_no_grad


class KeyQueue(nn.Module):
    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"queue size and dim must be > 0, got size={size}, dim={dim}")
        # Random unit vectors until real keys replace them (as the reference code starts).
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write the newest keys (this worker's, then gathered from all) over the oldest ones,
        wrapping around the end of the buffer."""
        keys = gather_no_grad(keys.detach()).to(self.keys.dtype)
        if keys.shape[0] > self.size:
            keys = keys[-self.size :]  # only the newest K survive anyway
        start = int(self.pointer)
        rows = (torch.arange(keys.shape[0], device=self.keys.device) + start) % self.size
        self.keys[rows] = keys
        self.pointer.fill_((start + keys.shape[0]) % self.size)

    def negatives(self) -> torch.Tensor:
        return self.keys.clone().detach()
