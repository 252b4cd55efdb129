"""SimCLR training throughput on one device from synthetic batches already on it: images/s
and model FLOP utilisation (MFU) for each precision and memory-format setting, side by side.

    python benchmarks/train_throughput.py --device cuda [--compile] [--repeats 20]
    .venv/bin/python benchmarks/train_throughput.py --device cpu --models resnet18-32 --batch-scale 0.25

Models: ResNet-18 with the small-image stem on 32 px views (batch 512 pairs) and ResNet-50 with
the ImageNet stem on 224 px views (batch 256 pairs), each with SimCLR's 2-layer projector and
NT-Xent. A step is forward of both views, loss, backward and an SGD update. MFU is the
step's FLOPs (forward and backward, counted once with ``torch.utils.flop_counter``) over the
median step time, against the device's dense bf16 peak for every setting (so the settings
compare on one scale). Nothing here reads data: see ``data_pipeline.py`` for the feed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ssl_ray.nn.backbones import build_backbone
from ssl_ray.nn.heads import projection_head
from ssl_ray.nn.losses import NTXentLoss

MODELS = {
    # name: (backbone, stem, image side, pairs per batch)
    "resnet18-32": ("resnet18", "small", 32, 512),
    "resnet50-224": ("resnet50", "imagenet", 224, 256),
}
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts).
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAKS.items() if key in name), None)


def build(model: str, device: torch.device, channels_last: bool, compile_model: bool):
    backbone_name, stem, side, batch = MODELS[model]
    backbone, dim = build_backbone(backbone_name, 3, 64, stem=stem)
    net = torch.nn.Sequential(backbone, projection_head(dim, 2048, 128)).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6, **fused)
    forward = torch.compile(net) if compile_model else net
    return net, forward, optimizer, side, batch


def step_fn(forward, optimizer, criterion, precision: str, device: torch.device):
    def step(views: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            z = forward(views)
        half = z.shape[0] // 2
        loss = criterion(z[:half].float(), z[half:].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(model: str, setting: str, device: torch.device, repeats: int, batch_scale: float) -> dict:
    precision = "fp32" if setting.startswith("fp32") else "bf16"
    channels_last = "channels_last" in setting
    compile_model = "compile" in setting
    torch.manual_seed(0)
    net, forward, optimizer, side, batch = build(model, device, channels_last, compile_model)
    batch = max(8, int(batch * batch_scale))
    views = torch.randint(0, 256, (2 * batch, 3, side, side), dtype=torch.uint8, device=device)
    if channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    step = step_fn(forward, optimizer, NTXentLoss(0.2), precision, device)
    with FlopCounterMode(display=False) as counter:  # eager, once: the model's own FLOPs
        step_fn(net, optimizer, NTXentLoss(0.2), precision, device)(views)
    flops = counter.get_total_flops()
    for _ in range(3 if not compile_model else 5):  # warm-up (and compilation)
        step(views)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step(views)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    peak = peak_flops(device)
    return {
        "model": model,
        "setting": setting,
        "batch": batch,
        "images_per_s": batch / median,
        "step_ms": 1000 * median,
        "tflops": flops / median / 1e12,
        "mfu": flops / median / peak if peak else None,
        "memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    parser.add_argument("--batch-scale", type=float, default=1.0, help="shrink the batches (CPU runs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    settings = ["fp32", "bf16", "bf16+channels_last"] + (["bf16+channels_last+compile"] if args.compile else [])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, bf16 peak {peak_flops(device) or 'n/a'}")
    rows = []
    for model in args.models:
        for setting in settings:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rows.append(measure(model, setting, device, args.repeats, args.batch_scale))
            print(rows[-1], flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("\n| model | setting | batch (pairs) | images/s | step ms | TFLOP/s | MFU | vs fp32 | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {row["model"]: row["images_per_s"] for row in rows if row["setting"] == "fp32"}
    for row in rows:
        mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
        memory = "n/a" if row["memory_gib"] is None else f"{row['memory_gib']:.1f}"
        print(
            f"| {row['model']} | {row['setting']} | {row['batch']} | {row['images_per_s']:.0f} | {row['step_ms']:.1f} "
            f"| {row['tflops']:.1f} | {mfu} | {row['images_per_s'] / base[row['model']]:.2f}x | {memory} |"
        )


if __name__ == "__main__":
    main()
