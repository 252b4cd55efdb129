"""Where the colour part of the view recipe runs (``augment.on``), measured side by side.

    python benchmarks/device_augment.py --device cuda
    .venv/bin/python benchmarks/device_augment.py --device cpu --batch-scale 0.125 --repeats 5

For each model of ``train_throughput.py`` (bf16 + channels_last on GPUs, the defaults there):

- ``step``: a SimCLR training step on views already augmented on the device (the ceiling);
- ``step + device views``: the same step starting from uint8 crops on the device, with the
  colour recipe (flip, jitter, grayscale, blur, solarize; ``DeviceViews``) run first on it;
- ``device views``: that recipe alone on the device;
- on one CPU thread: the whole recipe as Ray Data runs it with ``augment.on: ray_data``
  (``ViewMaker``), and the crop alone (what Ray Data still does with ``augment.on: device``).

The last column turns the rates into CPU cores needed to feed the measured step rate each way
(decoding not included; ``data_pipeline.py`` measures that). Random uint8 images: the kernels'
cost does not depend on the content.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from train_throughput import MODELS, build, step_fn

from ssl_ray.config import AugmentConfig
from ssl_ray.nn.losses import NTXentLoss
from ssl_ray.views.transforms import DeviceViews, ViewMaker

RECIPES = {
    # SimCLR's CIFAR-style recipe at 32 px (no blur); the ImageNet recipe at 224 px with
    # BYOL's asymmetric blur and solarize, the most expensive of the shipped recipes.
    "resnet18-32": AugmentConfig(image_size=32, strength=0.5),
    "resnet50-224": AugmentConfig(
        image_size=224, strength=1.0, crop_scale=(0.08, 1.0), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2)
    ),
}
SOURCE_SIDE = {"resnet18-32": 36, "resnet50-224": 256}  # decoded image size before the crop


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(model: str, device: torch.device, repeats: int, batch_scale: float) -> dict:
    recipe, gpu = RECIPES[model], device.type == "cuda"
    torch.manual_seed(0)
    net, forward, optimizer, side, batch = build(model, device, channels_last=gpu, compile_model=False)
    batch = max(8, int(batch * batch_scale))
    memory_format = torch.channels_last if gpu else torch.contiguous_format
    step = step_fn(forward, optimizer, NTXentLoss(0.2), "bf16" if gpu else "fp32", device)
    device_views = DeviceViews(recipe, channels=3).to(device)
    crops = [torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, device=device) for _ in range(2)]
    ready = torch.cat(device_views(crops)).contiguous(memory_format=memory_format)

    def step_with_views() -> None:
        step(torch.cat(device_views(crops)).contiguous(memory_format=memory_format))

    pairs = {
        "step": batch / timed(lambda: step(ready), repeats, device),
        "step + device views": batch / timed(step_with_views, repeats, device),
        "device views": batch / timed(lambda: device_views(crops), repeats, device),
    }
    # One CPU thread, as each Ray Data task runs (ViewMaker sets it).
    threads = torch.get_num_threads()
    source = {"image": np.random.default_rng(0).integers(0, 256, (64, *[SOURCE_SIDE[model]] * 2, 3), dtype=np.uint8)}
    full, crop_only = ViewMaker(recipe, channels=3), ViewMaker(recipe, channels=3, stage="crop")
    per_core = {
        "cpu: whole recipe": 64 / timed(lambda: full(source), max(3, repeats // 4), torch.device("cpu")),
        "cpu: crop only": 64 / timed(lambda: crop_only(source), max(3, repeats // 4), torch.device("cpu")),
    }
    torch.set_num_threads(threads)
    return {"model": model, "batch": batch, **pairs, **per_core}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-scale", type=float, default=1.0, help="shrink the batches (CPU runs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}")
    rows = [measure(model, device, args.repeats, args.batch_scale) for model in args.models]
    print(
        "\n| model | batch (pairs) | step, views ready (pairs/s) | step + device views (pairs/s) | ratio "
        "| device views alone (pairs/s) | 1 CPU core: whole recipe / crop only (pairs/s) "
        "| cores to feed the step: ray_data / device |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fed = r["step + device views"]
        print(
            f"| {r['model']} | {r['batch']} | {r['step']:.0f} | {fed:.0f} | {fed / r['step']:.2f}x "
            f"| {r['device views']:.0f} | {r['cpu: whole recipe']:.0f} / {r['cpu: crop only']:.0f} "
            f"| {r['step'] / r['cpu: whole recipe']:.1f} / {fed / r['cpu: crop only']:.1f} |"
        )


if __name__ == "__main__":
    main()
