"""``ssl-ray`` command line: ``ssl-ray pretrain CONFIG [section.field=value ...] [--resume]`` and
``ssl-ray prepare SRC DST``."""

from __future__ import annotations

import argparse
import sys

from ssl_ray.config import ConfigError, load_config
from ssl_ray.data.errors import DataSourceError


def _pretrain(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    config = load_config(args.config, overrides)  # validated before Ray starts

    from ssl_ray.train.trainer import ResumeError, run_pretraining  # heavy imports after validation

    try:
        result = run_pretraining(config, resume=args.resume)
    except (ResumeError, DataSourceError) as error:
        print(f"ssl-ray: {error}", file=sys.stderr)
        return 2
    from ssl_ray.tracking.mlflow_run import ui_command

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    print()
    print(f"kNN top-1 on the {config.eval.knn_query_size or 'full'} test images (k={config.eval.knn_k}):")
    print(f"  raw pixels            {pct(result.knn_top1_raw_pixels)}")
    print(f"  random-init encoder   {pct(result.knn_top1_init)}")
    print(f"  trained encoder       {pct(result.knn_top1)}   ({result.epochs_done} epochs)")
    print(f"Ray Train run:  {result.ray_run_name}  (checkpoint: {result.checkpoint_path})")
    print(f"MLflow run id:  {result.mlflow_run_id}  (experiment '{config.tracking.experiment}')")
    print(f"Open the MLflow UI:  {ui_command(result.tracking_uri, result.mlflow_experiment_id, result.mlflow_run_id)}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from ssl_ray.config import StorageConfig
    from ssl_ray.data.prepare import PrepareOptions, prepare

    try:
        storage = StorageConfig(endpoint_url=args.endpoint_url, region=args.region)
    except ValueError as error:
        raise ConfigError(f"--endpoint-url/--region: {error}") from None
    options = PrepareOptions(source=args.source, split=args.split, shard_mb=args.shard_mb, storage=storage)
    try:
        manifest = prepare(args.src, args.dst, options)
    except DataSourceError as error:
        print(f"ssl-ray: {error}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(manifest["skipped"].items())) or "none"
    print(
        f"{manifest['images']} images in {manifest['shards']} shards ({manifest['bytes'] / 2**20:.1f} MiB) "
        f"at {args.dst}; {len(manifest['classes'])} classes; skipped: {skipped}; manifest: {args.dst.rstrip('/')}/manifest.json"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = commands.add_parser("pretrain", help="self-supervised pretraining on Ray Train, tracked in MLflow")
    pretrain.add_argument("config", help="pipeline YAML, e.g. pipelines/simclr_fashion_mnist.yaml")
    pretrain.add_argument("overrides", nargs="*", metavar="section.field=value", help="override any config field")
    pretrain.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_NAME",
        help="continue the newest run of this pipeline (or the named Ray run) from its last checkpoint",
    )
    pretrain.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    pretrain.set_defaults(handler=_pretrain)

    shards = commands.add_parser(
        "prepare", help="write a folder or bucket of images (or Fashion-MNIST) as Parquet shards"
    )
    shards.add_argument(
        "src",
        help="folder or s3://bucket/prefix of images (class sub-folders give labels), or the Fashion-MNIST directory/URL",
    )
    shards.add_argument("dst", help="empty folder or s3://bucket/prefix for the shards and manifest.json")
    shards.add_argument("--source", choices=["images", "fashion_mnist"], default="images")
    shards.add_argument("--split", choices=["train", "test"], default="train", help="Fashion-MNIST split")
    shards.add_argument("--shard-mb", type=float, default=64.0, help="target shard size in MiB (default 64)")
    shards.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS, or $AWS_ENDPOINT_URL)")
    shards.add_argument("--region", help="S3 region")
    shards.set_defaults(handler=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options too (``--resume train.epochs=4``).
    args, rest = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    stray = [item for item in rest if "=" not in item or item.startswith("-") or not takes_overrides]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"ssl-ray: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
