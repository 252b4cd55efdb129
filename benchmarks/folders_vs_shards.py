"""Loose files in class folders against the same images as Parquet shards: classes per
training batch, and SimCLR's kNN and linear top-1 at equal epochs (the folder path must learn
as well as the shards do).

The dataset is made here from OpenClipart (Debian's ``openclipart-png``: clip art drawn by
people, one folder per category): the categories with at least ``--min-per-class`` images,
less the catch-all ones, at most ``--per-class`` each, alpha composited on white and scaled
to ``--side`` px (so decoding does not dominate a CPU run), split 80/20 by class with a seed.
The training folders are listed class by class, the case a read in listing order gets wrong.

    .venv/bin/python benchmarks/folders_vs_shards.py --out /tmp/folders-vs-shards --seeds 0 1

Prints the table benchmarks/README.md quotes; every run is in ``OUT/mlflow.db``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CATCH_ALL = {"unsorted", "special"}  # OpenClipart's "anything" folders: no visual class


def make_dataset(source: Path, out: Path, per_class: int, min_per_class: int, side: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    counts = {}
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and p.name not in CATCH_ALL):
        paths = sorted(folder.rglob("*.png"))
        if len(paths) < min_per_class:
            continue
        picks = [paths[i] for i in sorted(rng.choice(len(paths), min(per_class, len(paths)), replace=False))]
        order = rng.permutation(len(picks))
        cut = int(round(0.8 * len(picks)))
        for rank, index in enumerate(order):
            split = "train" if rank < cut else "val"
            target = out / split / folder.name / f"{index:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(picks[index]) as image:
                image = image.convert("RGBA")
                white = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, image).convert("RGB")
                scale = side / min(image.size)
                image = image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))))
                image.save(target)
        counts[folder.name] = (cut, len(picks) - cut)
    return counts


def cli(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ssl_ray.cli", *args], capture_output=True, text=True, cwd=cwd, check=False
    )
    if done.returncode:
        sys.exit(f"ssl-ray {' '.join(args[:2])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done.stdout


def classes_per_batch(config, batch: int, epochs: int = 3) -> list[int]:
    from ssl_ray.data.sources import build_pretrain_data

    data = build_pretrain_data(config)
    counts = []
    for _ in range(epochs):
        for rows in data.train.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True):
            counts.append(len(np.unique(rows["label"])))
    return counts


def uniform_classes_per_batch(labels: np.ndarray, batch: int, draws: int = 200, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    counts = []
    for _ in range(draws):
        order = rng.permutation(labels)
        counts += [len(np.unique(order[i : i + batch])) for i in range(0, len(order) - batch + 1, batch)]
    return float(np.mean(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="/usr/share/openclipart/png")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=250)
    parser.add_argument("--min-per-class", type=int, default=130)
    parser.add_argument("--side", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    out = args.out.resolve()
    images = out / "images"
    if not (images / "train").exists():
        counts = make_dataset(Path(args.source), images, args.per_class, args.min_per_class, args.side, seed=0)
        (out / "classes.json").write_text(json.dumps(counts, indent=1))
    counts = json.loads((out / "classes.json").read_text())
    for split in ("train", "val"):
        if not (out / "shards" / split / "manifest.json").exists():
            cli("prepare", str(images / split), str(out / "shards" / split), "--shard-mb", "1", cwd=out)

    import ray

    from ssl_ray.config import load_config

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    pipeline = str(ROOT / "pipelines" / "simclr_images.yaml")
    layouts = {
        "loose files": ["data.source=images", f"data.path={images / 'train'}", f"data.val_path={images / 'val'}"],
        "shards": [
            "data.source=parquet",
            f"data.path={out / 'shards' / 'train'}",
            f"data.val_path={out / 'shards' / 'val'}",
        ],
    }
    labels = np.repeat(np.arange(len(counts)), [train for train, _ in counts.values()])
    mixing = {
        name: np.mean(
            classes_per_batch(load_config(pipeline, [*overrides, f"train.batch_size={args.batch}"]), args.batch)
        )
        for name, overrides in layouts.items()
    }
    uniform = uniform_classes_per_batch(labels, args.batch)
    ray.shutdown()

    rows = []
    for seed in args.seeds:
        for name, overrides in layouts.items():
            stdout = cli(
                "pretrain",
                pipeline,
                *overrides,
                f"train.epochs={args.epochs}",
                f"train.batch_size={args.batch}",
                f"train.seed={seed}",
                f"train.run_name=bench-{name.replace(' ', '-')}-s{seed}",
                "tracking.experiment=folders-vs-shards",
                cwd=out,
            )
            run_id = re.search(r"MLflow run id:\s+(\w+)", stdout).group(1)
            from mlflow.tracking import MlflowClient

            metrics = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_run(run_id).data.metrics
            rows.append((seed, name, metrics))
            print(
                f"seed {seed} {name}: kNN {metrics['knn_top1']:.3f} linear {metrics['eval/linear_top1']:.3f}",
                flush=True,
            )

    print(f"\n{len(counts)} classes, {len(labels)} training images, batch {args.batch}, {args.epochs} epochs")
    print(f"classes per batch: uniform shuffle {uniform:.2f}, " + ", ".join(f"{k} {v:.2f}" for k, v in mixing.items()))
    print("| layout | seed | kNN top-1 (k 20) | linear top-1 | random-init kNN | raw pixels kNN |")
    print("|---|---|---|---|---|---|")
    for seed, name, m in rows:
        print(
            f"| {name} | {seed} | {100 * m['knn_top1']:.1f}% | {100 * m['eval/linear_top1']:.1f}% | "
            f"{100 * m['knn_top1_init']:.1f}% | {100 * m['knn_top1_raw_pixels']:.1f}% |"
        )


if __name__ == "__main__":
    main()
