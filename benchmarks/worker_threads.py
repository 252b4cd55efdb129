"""Why ``train.threads_per_worker`` is passed to Ray workers as OMP_NUM_THREADS.

Ray starts a 1-CPU task with OMP_NUM_THREADS=1; raising torch's thread count inside it with
``torch.set_num_threads`` is not the same as starting the OpenMP runtime with that count.
This times one SimCLR training step of the demo encoder in Ray tasks both ways, alternating,
and prints the median images/s of each and their ratio.

    .venv/bin/python benchmarks/worker_threads.py [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import ray
import torch

HERE = str(Path(__file__).resolve().parent)


def step_rate(threads: int) -> float:
    import sys

    sys.path.insert(0, HERE)
    from train_step import images_per_second

    torch.set_num_threads(threads)
    return images_per_second(dict(width=32, blocks=(1, 1, 1, 1), stem_stride=2), "bf16", 128, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    inherited = ray.remote(num_cpus=1)(step_rate)
    started_right = ray.remote(num_cpus=1, runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}})(step_rate)
    rates = {"OMP_NUM_THREADS=1 + set_num_threads": [], f"OMP_NUM_THREADS={args.threads}": []}
    for _ in range(args.rounds):
        rates["OMP_NUM_THREADS=1 + set_num_threads"].append(ray.get(inherited.remote(args.threads)))
        rates[f"OMP_NUM_THREADS={args.threads}"].append(ray.get(started_right.remote(args.threads)))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"{name:40s} {value:7.0f} img/s  (runs: {', '.join(f'{v:.0f}' for v in rates[name])})")
    low, high = medians.values()
    print(f"ratio {high / low:.2f}x")


if __name__ == "__main__":
    main()
