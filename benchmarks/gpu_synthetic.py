"""A pipeline's training step on synthetic batches already on the device: the rate the
pipeline-fed run (``ssl-ray pretrain``, Ray Data into Ray Train) is compared with, for the same
config, built as a Ray Train worker builds it (the method, optimiser, precision, memory format,
the views' colour on the device where the run has it there) and stepped by the same
``training_step``. Only the feed differs: uint8 crops made once on the device, not streamed.

    python benchmarks/gpu_synthetic.py PIPELINE [section.field=value ...] [--steps 60] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ssl_ray.config import load_config
from ssl_ray.methods.base import TrainingClock
from ssl_ray.nn.precision import resolve_memory_format, resolve_precision
from ssl_ray.train.build import build_method
from ssl_ray.train.optim import build_optimizer
from ssl_ray.train.plan import TrainingPlan
from ssl_ray.train.step import training_step
from ssl_ray.views.transforms import DeviceViews


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=60, help="timed steps, after --warmup")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--window", type=int, default=10, help="steps per timed window (the median is reported)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    config = load_config(args.pipeline, args.overrides)
    use_gpu = config.train.use_gpu is True or (config.train.use_gpu == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_gpu else "cpu")
    if config.method.name not in ("simclr", "byol", "moco_v3", "simsiam", "dcl", "barlow_twins", "vicreg"):
        raise SystemExit(f"gpu_synthetic: {config.method.name}'s batches are not two plain views")
    batch = config.train.batch_size  # one worker: the global batch, as the loop's images/s counts
    plan = TrainingPlan.from_config(config, batch * (args.warmup + args.steps), "the synthetic set")
    precision = resolve_precision(config.train.precision, device)
    memory_format = resolve_memory_format(config.train.memory_format, device)
    torch.manual_seed(config.train.seed)
    method = build_method(config).to(device, memory_format=memory_format)
    optimizer = build_optimizer(config.optim, method, plan.peak_lr, fused=device.type == "cuda")
    on_device = config.augment.on == "device" or (config.augment.on == "auto" and use_gpu)
    colour = DeviceViews(config.augment, config.data.channels).to(device) if on_device else None
    side, channels = config.augment.image_size, config.data.channels
    generator = torch.Generator(device=device).manual_seed(0)
    crops = {
        f"view{i}": torch.randint(
            0, 256, (batch, channels, side, side), dtype=torch.uint8, device=device, generator=generator
        )
        for i in range(2)
    }
    floats = {k: v.float().div(255) for k, v in crops.items()}  # the views as Ray Data colours them, when not here
    windows, step = [], 0

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for phase, count in (("warmup", args.warmup), ("timed", args.steps)):
        sync()
        started = time.perf_counter()
        for i in range(count):
            columns = crops if colour is not None else floats
            batch_views = method.recipe.to_batch(columns, device, device_views=colour, memory_format=memory_format)
            clock = TrainingClock(step, plan.total_steps, plan.steps_per_epoch)
            training_step(method, optimizer, batch_views, clock, precision=precision)
            step += 1
            if phase == "timed" and (i + 1) % args.window == 0:
                sync()
                now = time.perf_counter()
                windows.append(args.window * batch / (now - started))
                started = now
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "method": config.method.name,
        "backbone": config.model.backbone,
        "batch": batch,
        "image_size": side,
        "precision": precision,
        "memory_format": "channels_last" if memory_format == torch.channels_last else "contiguous",
        "views_coloured_on_device": colour is not None,
        "images_per_s_median": statistics.median(windows),
        "images_per_s_windows": windows,
    }
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
