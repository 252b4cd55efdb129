"""Throughput of one SimCLR training step (forward, NT-Xent, backward, SGD) on this machine,
for encoder sizes and precisions side by side. No Ray: this isolates the model's cost.

    .venv/bin/python benchmarks/train_step.py [--threads 2] [--batch 256] [--repeats 7]

Prints the median images/s (pairs) over ``--repeats`` timed steps for each combination, and the
bf16/fp32 ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ssl_ray.nn.backbones import build_backbone
from ssl_ray.nn.heads import projection_head
from ssl_ray.nn.losses import NTXentLoss
from ssl_ray.nn.precision import autocast, cpu_has_bf16

ENCODERS = {
    "resnet18 w16 b1111 s1": dict(width=16, blocks=(1, 1, 1, 1), stem_stride=1),
    "resnet18 w32 b1111 s2 (demo)": dict(width=32, blocks=(1, 1, 1, 1), stem_stride=2),
    "resnet18 w16 b2222 s1": dict(width=16, blocks=(2, 2, 2, 2), stem_stride=1),
    "resnet18 w64 (full)": dict(width=64, blocks=None, stem_stride=1),
}


def images_per_second(encoder: dict, precision: str, batch: int, repeats: int) -> float:
    backbone, dim = build_backbone("resnet18", 1, **encoder)
    model = torch.nn.Sequential(backbone, projection_head(dim, 512, 128))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = NTXentLoss(0.2)
    views = torch.randint(0, 256, (2 * batch, 1, 28, 28), dtype=torch.uint8)
    device = torch.device("cpu")
    times = []
    for i in range(repeats + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        with autocast(precision, device):
            z = model(views)
        loss = criterion(z[:batch], z[batch:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-full", action="store_true", help="skip the width-64 ResNet-18 (slow on CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, batch {args.batch} pairs, CPU bf16: {cpu_has_bf16()}")
    print(f"{'encoder':32s} {'fp32 img/s':>11s} {'bf16 img/s':>11s} {'bf16/fp32':>10s}")
    for name, encoder in ENCODERS.items():
        if args.skip_full and encoder["width"] == 64:
            continue
        fp32 = images_per_second(encoder, "fp32", args.batch, args.repeats)
        bf16 = images_per_second(encoder, "bf16", args.batch, args.repeats)
        print(f"{name:32s} {fp32:11.0f} {bf16:11.0f} {bf16 / fp32:10.2f}", flush=True)


if __name__ == "__main__":
    main()
