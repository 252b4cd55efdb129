"""Run a function in two processes joined by a gloo process group (the CPU DDP backend)."""

from __future__ import annotations

import socket
from collections.abc import Callable


def _worker(rank: int, fn: Callable, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results[rank] = fn(rank)
    finally:
        dist.destroy_process_group()


def run_on_two_workers(fn: Callable) -> dict:
    """``{rank: fn(rank)}``; ``fn`` must be a module-level function (it is pickled)."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(fn, port, results), nprocs=2, join=True)
    return dict(results)
