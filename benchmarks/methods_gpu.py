"""Every method from its own pipelines/<method>_fashion_mnist.yaml, trained in one process on
one GPU, with the kNN monitor after every epoch.

The GPU machine lent to this project cannot carry Ray, so this runs the training loop's steps
without it: the same method, optimiser, learning-rate schedule, clock, frozen-layer rule,
non-finite guard and bf16 autocast as ``train/loop.py``, with the whole view recipe batched on
the GPU (``view_transform`` modules on device tensors) instead of Ray Data. What it measures:
whether each pipeline's hyperparameters learn at the pipeline's budget, and how fast each
method trains when data loading is not the limit.

    python benchmarks/methods_gpu.py --data DIR [--methods dino swav ...] [--epochs N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ssl_ray.config import load_config
from ssl_ray.data.fashion_mnist import load_split
from ssl_ray.methods.base import TrainingClock
from ssl_ray.monitors.features import extract_features
from ssl_ray.monitors.knn import knn_top1
from ssl_ray.nn.precision import resolve_precision
from ssl_ray.nn.schedules import warmup_cosine
from ssl_ray.train.build import build_method
from ssl_ray.train.guard import NonFiniteGuard
from ssl_ray.train.optim import build_optimizer
from ssl_ray.train.plan import TrainingPlan
from ssl_ray.train.step import training_step
from ssl_ray.views.recipe import Batch
from ssl_ray.views.transforms import view_transform

ROOT = Path(__file__).resolve().parents[1]


def batches(images: torch.Tensor, labels: torch.Tensor, size: int = 1024):
    for start in range(0, len(images), size):
        yield {"image": images[start : start + size], "label": labels[start : start + size]}


def run(method_name: str, args, train, test, device) -> list[dict]:
    overrides = [f"data.path={args.data}", *args.override]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    config = load_config(ROOT / "pipelines" / f"{method_name}_fashion_mnist.yaml", overrides)
    flat = torch.from_numpy(train.images[: args.train_size]).to(device)  # (N, H, W) uint8
    images = flat.unsqueeze(1)
    labels = torch.from_numpy(train.labels[: args.train_size]).to(device)
    bank = (flat[: args.bank], labels[: args.bank])
    queries = (
        torch.from_numpy(test.images[: args.queries]).to(device),
        torch.from_numpy(test.labels[: args.queries]).to(device),
    )
    plan = TrainingPlan.from_config(config, len(images))
    precision = resolve_precision(config.train.precision, device)
    torch.manual_seed(config.train.seed)
    method = build_method(config).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(config.optim, method, plan.peak_lr, fused=device.type == "cuda")
    guard = NonFiniteGuard(config.train.max_nonfinite_steps, config.optim.grad_clip_norm)
    recipe = [
        view_transform(config.augment, config.data.channels, i).to(device) for i in range(config.augment.num_views)
    ]
    final_lr = plan.peak_lr * config.optim.final_lr_fraction

    def knn() -> float:
        bank_features, bank_labels = extract_features(method.backbone, batches(*bank), device, precision)
        query_features, query_labels = extract_features(method.backbone, batches(*queries), device, precision)
        e = config.eval
        return knn_top1(query_features, query_labels, bank_features, bank_labels, 10, e.knn_k, e.knn_temperature)

    rows, step = (
        [{"method": method_name, "epoch": 0, "loss": float("nan"), "skipped": 0, "knn": knn(), "img_s": 0.0}],
        0,
    )
    print(f"{method_name:>13} random init: kNN {100 * rows[0]['knn']:.1f}%", flush=True)
    for epoch in range(1, config.train.epochs + 1):
        started, losses = time.perf_counter(), []
        order = torch.randperm(len(images), device=device)
        for i in range(plan.steps_per_epoch):
            index = order[i * plan.global_batch : (i + 1) * plan.global_batch]
            with torch.no_grad():
                x = images[index].float().div_(255.0)
                views = [t(x).clamp_(0, 1).contiguous(memory_format=torch.channels_last) for t in recipe]
            lr = warmup_cosine(step, plan.total_steps, plan.warmup_steps, plan.peak_lr, final_lr)
            for group in optimizer.param_groups:
                group["lr"] = plan.peak_lr if group.get("fixed_lr") else lr
            clock = TrainingClock(step, plan.total_steps, plan.steps_per_epoch)
            batch = Batch(views, labels[index] if method.uses_labels else None)
            out = training_step(method, optimizer, batch, clock, precision=precision, guard=guard)
            step += 1
            if out is None:
                continue
            losses.append(out["loss"].detach())
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        row = {
            "method": method_name,
            "epoch": epoch,
            "loss": torch.stack(losses).mean().item() if losses else float("nan"),
            "skipped": guard.take_skipped(),
            "knn": knn(),
            "img_s": plan.steps_per_epoch * plan.global_batch / elapsed,
        }
        print(
            f"{row['method']:>13} epoch {epoch}: loss {row['loss']:.3f}, kNN {100 * row['knn']:.1f}%, "
            f"{row['img_s']:.0f} img/s, {row['skipped']} skipped",
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="directory with Fashion-MNIST's four IDX files")
    parser.add_argument("--methods", nargs="+", default=["simclr", "dcl", "barlow_twins", "vicreg", "swav", "dino"])
    parser.add_argument("--epochs", type=int, help="default: each pipeline's own")
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--bank", type=int, default=10_000, help="kNN bank: the first N training images")
    parser.add_argument("--queries", type=int, default=2_000, help="kNN queries: the first N test images")
    parser.add_argument("--override", nargs="*", default=[], help="section.field=value for every method")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    results = []
    for name in args.methods:
        results += run(name, args, train, test, device)
    print("\n| method | epochs | last loss | kNN top-1 (k 200): random init -> trained | train img/s (median) |")
    print("|---|---|---|---|---|")
    for name in args.methods:
        mine = [r for r in results if r["method"] == name]
        speeds = sorted(r["img_s"] for r in mine[1:])
        print(
            f"| {name} | {len(mine) - 1} | {mine[-1]['loss']:.3f} | {100 * mine[0]['knn']:.1f}% -> "
            f"{100 * mine[-1]['knn']:.1f}% | {speeds[len(speeds) // 2]:.0f} |"
        )


if __name__ == "__main__":
    main()
