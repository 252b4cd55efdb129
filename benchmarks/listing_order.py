"""What the per-epoch shuffle of a file source costs on the node that plans the read: a seeded
permutation of every unit (file) and the read tasks cut from it, for a listing of a million
files, without Ray running (the planning is plain Python; no image byte moves).

    .venv/bin/python benchmarks/listing_order.py --files 1000000 --repeats 5
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
import tracemalloc

from ssl_ray.data.files import FILES_PER_TASK
from ssl_ray.data.order import ShuffledUnits


def _read_nothing(units: list):
    return iter(())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    units = [(f"bucket/images/train/class-{i % 1000:04d}/{i:08d}.jpg", i % 1000) for i in range(args.files)]
    source = ShuffledUnits(units, [1] * len(units), FILES_PER_TASK, _read_nothing, seed=0, name="bench")
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        tasks = source.get_read_tasks(parallelism=200)
        seconds.append(time.perf_counter() - started)
    tracemalloc.start()
    tasks = source.get_read_tasks(parallelism=200)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    shipped = len(pickle.dumps(source))
    print(
        f"{args.files} files, {len(tasks)} read tasks of {FILES_PER_TASK}: planning an epoch's order "
        f"median {statistics.median(seconds):.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f}, "
        f"{args.repeats} repeats); peak {peak / 2**20:.0f} MiB while planning; the listing as shipped "
        f"to the planner {shipped / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
