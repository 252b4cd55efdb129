"""Decoded and augmented images per second (two views each) through the data pipeline.

Two datasets, made from Fashion-MNIST: 224 px JPEGs (the images upscaled, as RGB; ImageNet-like
decode cost) and the 28 px images themselves (PNG). Each is read by

- ``ray-parquet-local``: Ray Data from local Parquet shards (``ssl-ray prepare``),
- ``ray-parquet-s3`` / ``ray-files-s3``: Ray Data from shards / loose files in an S3 server
  (moto, on 127.0.0.1, started here: it shares the cores with the pipeline),
- ``torch-dataloader``: ``torch.utils.data.DataLoader`` over the loose local files with the
  same decode and the same batched view recipe, ``num_workers`` = the CPU count,

at 1 and 2 CPUs (Ray: ``ray.init(num_cpus=N)``; DataLoader: N workers). Every pipeline yields
batches of 256 with two uint8 views; the consumer only counts rows. Medians of ``--repeats``
passes after one warm-up pass.

    .venv/bin/python benchmarks/data_pipeline.py [--jpeg-images 600] [--small-images 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import numpy as np
import ray
import ray.data
import torch
from PIL import Image

from ssl_ray.config import AugmentConfig, DataConfig, StorageConfig
from ssl_ray.data import fashion_mnist
from ssl_ray.data.decode import decode_image
from ssl_ray.data.files import image_files, parquet_shards
from ssl_ray.data.prepare import PrepareOptions, prepare
from ssl_ray.data.sources import with_views
from ssl_ray.views.transforms import ViewMaker

BATCH = 256
DATASETS = {
    # name: (image side written, channels, decode size, view size)
    "jpeg-224": (224, 3, 256, 224),
    "fashion-mnist-28": (28, 1, 28, 28),
}


def write_images(root: Path, name: str, count: int) -> Path:
    side, channels, _, _ = DATASETS[name]
    data = fashion_mnist.load_split(
        os.environ.get("SSL_RAY_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"), "train"
    )
    for i in range(count):
        image = Image.fromarray(data.images[i])
        folder = root / name / f"class{data.labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        if side != 28:
            image = image.resize((side, side), Image.BICUBIC).convert("RGB")
            image.save(folder / f"{i:06d}.jpg", quality=90)
        else:
            image.save(folder / f"{i:06d}.png")
    return root / name


def start_s3(root: Path) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from services import start_moto

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return start_moto(root, "bench-s3")


def upload_tree(client, bucket: str, local: Path, prefix: str) -> str:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def ray_pipeline(source, augment: AugmentConfig, channels: int):
    """The training pipeline's own views step (``sources.with_views``)."""
    views = with_views(source.dataset, augment, channels)
    return lambda: views.iter_batches(batch_size=BATCH, batch_format="numpy")


class FilesDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], channels: int, size: int) -> None:
        self.paths, self.channels, self.size = paths, channels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return decode_image(self.paths[index].read_bytes(), self.channels, self.size)


class ViewsCollate:
    """The same batched kornia recipe, run in the DataLoader worker on each batch."""

    def __init__(self, augment: AugmentConfig, channels: int) -> None:
        self.maker = ViewMaker(augment, channels)

    def __call__(self, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        views = self.maker.views(np.stack(images))
        return {"view0": views[0], "view1": views[1]}


def dataloader_pipeline(folder: Path, augment: AugmentConfig, channels: int, decode_size: int, workers: int):
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    loader = torch.utils.data.DataLoader(
        FilesDataset(paths, channels, decode_size),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        collate_fn=ViewsCollate(augment, channels),
        persistent_workers=False,
        prefetch_factor=2,
    )
    return lambda: iter(loader)


def images_per_second(make_iterator, repeats: int) -> float:
    rates = []
    for attempt in range(repeats + 1):
        started, rows = time.perf_counter(), 0
        for batch in make_iterator():
            rows += len(batch["view0"])
        if attempt:  # the first pass warms caches, workers and imports
            rates.append(rows / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jpeg-images", type=int, default=600, help="224 px JPEGs (slow: ~30/s per core)")
    parser.add_argument("--small-images", type=int, default=5000, help="28 px Fashion-MNIST PNGs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="ssl-ray-bench-"))
    server, endpoint = start_s3(work)
    storage = StorageConfig(endpoint_url=endpoint)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    results = []
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        locations = {}
        for name in DATASETS:
            count = args.jpeg_images if name == "jpeg-224" else args.small_images
            folder = write_images(work / "files", name, count)
            shards = work / "shards" / name
            # Eight shards: a dataset this small in one shard would be one block, one task at a
            # time, and a second CPU would have nothing to do (real datasets have thousands).
            total_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
            prepare(str(folder), str(shards), PrepareOptions(shard_mb=total_mb / 8, storage=storage))
            locations[name] = (
                folder,
                shards,
                upload_tree(client, "bench", folder, f"files/{name}"),
                upload_tree(client, "bench", shards, f"shards/{name}"),
            )
        ray.shutdown()
        for cpus in args.cpus:
            for name, (_, channels, decode_size, view_size) in DATASETS.items():
                folder, shards, files_url, shards_url = locations[name]
                augment = AugmentConfig(image_size=view_size, crop_scale=(0.2, 1.0))
                data = DataConfig(source="parquet", path=str(shards), channels=channels, decode_size=decode_size)
                ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
                ray.data.DataContext.get_current().enable_progress_bars = False
                pipelines = {
                    "ray-parquet-local": ray_pipeline(
                        parquet_shards(str(shards), data, storage, decode_size), augment, channels
                    ),
                    "ray-parquet-s3": ray_pipeline(
                        parquet_shards(shards_url, data, storage, decode_size), augment, channels
                    ),
                    "ray-files-s3": ray_pipeline(
                        image_files(files_url, storage, channels, decode_size), augment, channels
                    ),
                }
                for label, make in pipelines.items():
                    results.append((name, cpus, label, images_per_second(make, args.repeats)))
                    print(results[-1], flush=True)
                ray.shutdown()
                loader = dataloader_pipeline(folder, augment, channels, decode_size, cpus)
                results.append((name, cpus, "torch-dataloader", images_per_second(loader, args.repeats)))
                print(results[-1], flush=True)
    finally:
        server.terminate()
    print(
        f"\n{args.jpeg_images} JPEGs / {args.small_images} Fashion-MNIST images, median of {args.repeats} passes, "
        f"batch {BATCH}, two views each\n"
    )
    print("| dataset | CPUs | pipeline | images/s | vs DataLoader |")
    print("|---|---|---|---|---|")
    baseline = {(d, c): r for d, c, p, r in results if p == "torch-dataloader"}
    for dataset, cpus, pipeline, rate in results:
        print(f"| {dataset} | {cpus} | {pipeline} | {rate:.0f} | {rate / baseline[(dataset, cpus)]:.2f}x |")


if __name__ == "__main__":
    main()
