"""The one place that asks about the process group; everything falls back to one process.

``gather_with_grad`` keeps the autograd graph (for negatives in a contrastive loss, whose
gradient must reach every worker's encoder); ``gather_no_grad`` does not (for queues, kNN banks).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def rank_zero_says(value: int, device: torch.device) -> int:
    """Rank 0's small integer ``value`` on every rank (a decision only rank 0 can make, that
    all must follow; exact, a float32 holds it)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([float(value)], device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all workers along dim 0; gradients flow back to each worker."""
    if not is_distributed():
        return tensor
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(tensor), dim=0)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_no_grad(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` summed (``op="max"`` / ``"min"``: maximised / minimised) over all workers, in
    place, no gradient; itself with one process."""
    if is_distributed():
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(tensor, op=ops[op])
    return tensor


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world_size()
    return value


@torch.no_grad()
def shuffle_across_workers(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MoCo's shuffling BN (He et al. 2020, Sec. 3.3): deal the global batch out to the workers
    in a random order shared by all, so the key encoder's BN statistics on each worker come
    from other images than the queries' (otherwise BN lets the model find the positive through
    the batch statistics and "cheat" the pretext task). Returns this worker's shuffled rows and
    the permutation that ``unshuffle_across_workers`` undoes. With one worker there is nothing
    to shuffle across, and the batch comes back unchanged."""
    if not is_distributed():
        return batch, None
    everything = gather_no_grad(batch)
    order = torch.randperm(everything.shape[0], device=batch.device)
    dist.broadcast(order, src=0)
    mine = order.view(world_size(), -1)[rank()]
    return everything[mine], torch.argsort(order)


@torch.no_grad()
def unshuffle_across_workers(outputs: torch.Tensor, restore: torch.Tensor | None) -> torch.Tensor:
    """This worker's rows of the outputs, back in the order of its own input batch."""
    if restore is None:
        return outputs
    everything = gather_no_grad(outputs)
    return everything[restore.view(world_size(), -1)[rank()]]


def this_workers_share(rows: torch.Tensor) -> torch.Tensor:
    """Every ``world_size``-th row, starting at this worker's rank: a tensor every worker holds
    in full (a gathered queue) split so that the workers' shares together hold each row once."""
    return rows[rank() :: world_size()]


@torch.no_grad()
def rank_zero_rows(rows: torch.Tensor | None, columns: int, device: torch.device) -> torch.Tensor:
    """Rank 0's int64 table ``rows`` (N, columns), N known to rank 0 only, on every rank."""
    if not is_distributed():
        return rows
    count = torch.tensor([float(len(rows)) if rank() == 0 else 0.0], device=device)
    dist.broadcast(count, src=0)
    if rank() == 0:
        table = rows.to(device=device, dtype=torch.long).contiguous()
    else:
        table = torch.empty((int(count.item()), columns), dtype=torch.long, device=device)
    dist.broadcast(table, src=0)
    return table


@torch.no_grad()
def rank_zero_tensor(tensor: torch.Tensor) -> None:
    """Rank 0's values of ``tensor`` (same shape on every rank) copied into it on every rank."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
