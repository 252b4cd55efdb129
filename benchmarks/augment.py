"""Per-image cost of one view's recipe, step by step, on one core: kornia's ColorJitter (HSV
round trip) against ssl_ray's RandomColourJitter (one affine colour map per image), side by
side in one process.

    .venv/bin/python benchmarks/augment.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import kornia.augmentation as K
import torch

from ssl_ray.views.colour import RandomColourJitter

CASES = {"224 px RGB": (3, 256, 224), "28 px grayscale": (1, 28, 28)}  # channels, input side, view side


def ms_per_image(module, x: torch.Tensor, repeats: int) -> float:
    module(x)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        module(x)
        times.append((time.perf_counter() - started) / len(x) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| images | step | ms per image (median) |")
    print("|---|---|---|")
    for label, (channels, side, size) in CASES.items():
        x = torch.rand(args.batch, channels, side, side)
        crop = K.RandomResizedCrop((size, size), scale=(0.2, 1.0))
        cropped = crop(x)
        saturation, hue = (0.4, 0.1) if channels == 3 else (0.0, 0.0)
        steps = {
            "random resized crop": (crop, x),
            "horizontal flip": (K.RandomHorizontalFlip(), cropped),
            "kornia ColorJitter": (K.ColorJitter(0.4, 0.4, saturation, hue, p=1.0), cropped),
            "RandomColourJitter": (RandomColourJitter(0.4, 0.4, saturation, hue, p=1.0), cropped),
        }
        if channels == 3:
            steps["grayscale p 0.2"] = (K.RandomGrayscale(p=0.2), cropped)
        results = {name: ms_per_image(module, inputs, args.repeats) for name, (module, inputs) in steps.items()}
        for name, value in results.items():
            print(f"| {label} | {name} | {value:.3f} |")
        ratio = results["kornia ColorJitter"] / results["RandomColourJitter"]
        print(f"| {label} | jitter speed-up | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
