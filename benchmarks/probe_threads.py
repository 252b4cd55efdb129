"""The linear probe's fits on one thread against the process's default thread count, side by
side in one process: real features (a seeded random-init encoder of the demo's shape on
class-stratified Fashion-MNIST samples), after torch has run the encoder, as in evaluation.

    .venv/bin/python benchmarks/probe_threads.py --train 1000 --test 300 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ssl_ray.data.fashion_mnist import load_split
from ssl_ray.data.subsets import stratified_sample
from ssl_ray.eval import probe
from ssl_ray.nn.backbones import build_backbone


def features(encoder, split, n: int):
    index = stratified_sample(split.labels, n, 0)
    images = torch.from_numpy(split.images[index]).unsqueeze(1).float() / 127.5 - 1
    with torch.no_grad():
        return torch.cat([encoder(images[i : i + 256]) for i in range(0, n, 256)]).numpy(), split.labels[index]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=os.environ.get("SSL_RAY_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder, _ = build_backbone("resnet18", 1, width=args.width, blocks=(1, 1, 1, 1))
    train_x, train_y = features(encoder.eval(), load_split(args.data, "train"), args.train)
    test_x, test_y = features(encoder, load_split(args.data, "test"), args.test)
    print(f"features {train_x.shape}, torch threads {torch.get_num_threads()}")
    rule = probe.ONE_THREAD_BELOW
    times: dict[str, list[float]] = {"default threads": [], "one thread": []}
    for _ in range(args.repeats):  # alternating, so drift hits both alike
        for name, threshold in (("default threads", 0), ("one thread", 1 << 62)):
            probe.ONE_THREAD_BELOW = threshold
            started = time.perf_counter()
            result = probe.linear_probe(train_x, train_y, test_x, test_y)
            times[name].append(time.perf_counter() - started)
            print(f"  {name}: {times[name][-1]:.2f} s, top-1 {result.top1:.3f}, weight decay {result.weight_decay:g}")
    probe.ONE_THREAD_BELOW = rule
    default, one = (statistics.median(times[k]) for k in ("default threads", "one thread"))
    print(f"median: default threads {default:.2f} s, one thread {one:.2f} s, ratio {default / one:.1f}x")


if __name__ == "__main__":
    main()
