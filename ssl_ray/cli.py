"""``ssl-ray`` command line: ``ssl-ray pretrain CONFIG [section.field=value ...] [--resume]``,
``ssl-ray sweep CONFIG --space SPACE [...]`` and ``ssl-ray prepare SRC DST``."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from ssl_ray.config import ConfigError, load_config
from ssl_ray.data.errors import DataSourceError


def _pretrain(args: argparse.Namespace) -> int:
    config = load_config(args.config, _overrides(args))  # validated before Ray starts

    from ssl_ray.eval.after_pretraining import finish_pretraining  # heavy imports after validation
    from ssl_ray.train.guard import NonFiniteLossError
    from ssl_ray.train.trainer import ResumeError, run_pretraining

    try:
        result = run_pretraining(config, resume=args.resume, after_training=finish_pretraining)
    except (ResumeError, DataSourceError) as error:
        print(f"ssl-ray: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"ssl-ray: {error}", file=sys.stderr)
        return 1
    from ssl_ray.tracking.mlflow_run import ui_command

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    print()
    print(
        f"kNN top-1 on the {config.eval.knn_query_size or 'full'} test images (k={result.knn_k or config.eval.knn_k}):"
    )
    print(f"  raw pixels            {pct(result.knn_top1_raw_pixels)}")
    print(f"  random-init encoder   {pct(result.knn_top1_init)}")
    print(
        f"  trained encoder       {pct(result.knn_top1)}   ({result.epochs_done} epoch{'s' * (result.epochs_done != 1)})"
    )
    print(f"Ray Train run:  {result.ray_run_name}  (checkpoint: {result.checkpoint_path})")
    print(f"MLflow run id:  {result.mlflow_run_id}  (experiment '{config.tracking.experiment}')")
    print(f"Open the MLflow UI:  {ui_command(result.tracking_uri, result.mlflow_experiment_id, result.mlflow_run_id)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ssl_ray.eval.encoders import SourceError, load_encoder
    from ssl_ray.eval.evaluate import FROZEN_PROTOCOLS, EvaluateOptions, evaluate
    from ssl_ray.tracking.mlflow_run import resolve_tracking_uri, ui_command

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        encoder = load_encoder(args.source, tracking_uri, args.config, args.overrides)
        references = tuple(load_encoder(source, tracking_uri) for source in args.reference or ())
    except (SourceError, DataSourceError) as error:
        print(f"ssl-ray: {error}", file=sys.stderr)
        return 2
    protocols = tuple(args.protocol or FROZEN_PROTOCOLS)
    options = EvaluateOptions(
        protocols=protocols,
        label_fractions=tuple(args.labels or [0.1]),
        finetune_epochs=args.finetune_epochs,
        baselines=not args.no_baselines,
        diagnostics=not args.no_diagnostics,
        train_size=args.train_size,
        test_size=args.test_size,
        seed=args.seed,
        scenes=args.scenes,
        references=references,
    )
    try:
        result = evaluate(encoder, options, tracking_uri)
    except DataSourceError as error:
        print(f"ssl-ray: {error}", file=sys.stderr)
        return 2
    print()
    print(f"Evaluation of {args.source} ({result.seconds:.0f} s), top-1 on the test images:")
    print(result.table())
    if result.diagnostics:
        d = result.diagnostics
        print(
            f"alignment {d['alignment']:.3f}, uniformity {d['uniformity']:.3f}, "
            f"effective rank {d['effective_rank']:.1f}  (plots under eval/diagnostics)"
        )
    print(f"MLflow run id:  {result.run_id}")
    print(f"Open the MLflow UI:  {ui_command(tracking_uri, None, None)}")
    return 0


def _label_fraction(text: str) -> float:
    """ "10%" -> 0.1 (a bare number is a percentage too)."""
    try:
        value = float(text.rstrip("%")) / 100.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a percentage, e.g. 10%") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage in (0, 100]")
    return value


def _prepare(args: argparse.Namespace) -> int:
    from ssl_ray.config import storage_from_overrides
    from ssl_ray.data.prepare import PrepareOptions, prepare

    storage = storage_from_overrides(args.overrides)  # storage.endpoint_url=..., as every command spells it
    openclipart_only = {"--size": args.size, "--test-share": args.test_share}
    if args.source != "openclipart" and any(value is not None for value in openclipart_only.values()):
        given = [flag for flag, value in openclipart_only.items() if value is not None]
        print(f"ssl-ray: {', '.join(given)}: for --source openclipart only", file=sys.stderr)
        return 2
    if args.test_share is not None and not 0.0 < args.test_share < 1.0:
        print(f"ssl-ray: --test-share {args.test_share}: a share strictly between 0 and 1", file=sys.stderr)
        return 2
    if args.scenes and args.source == "images":
        print("ssl-ray: --scenes: of --source openclipart or fashion_mnist", file=sys.stderr)
        return 2
    scene_only = {"--scene-size": args.scene_size, "--scene-objects": args.scene_objects}
    if not args.scenes and any(value is not None for value in scene_only.values()):
        given = [flag for flag, value in scene_only.items() if value is not None]
        print(f"ssl-ray: {', '.join(given)}: with --scenes only", file=sys.stderr)
        return 2
    for flag, value, least in (
        ("--scenes", args.scenes, 1),
        ("--scene-size", args.scene_size, 16),
        ("--scene-objects", args.scene_objects, 1),
    ):
        if value is not None and value < least:
            print(f"ssl-ray: {flag} {value}: at least {least}", file=sys.stderr)
            return 2
    if args.size is not None and args.size < 8:
        print(f"ssl-ray: --size {args.size}: at least 8 px", file=sys.stderr)
        return 2
    defaults = PrepareOptions()
    options = PrepareOptions(
        source=args.source,
        split=args.split,
        shard_mb=args.shard_mb,
        seed=args.seed,
        size=args.size or defaults.size,
        test_share=args.test_share or defaults.test_share,
        scenes=args.scenes or 0,
        scene_size=args.scene_size,
        scene_objects=args.scene_objects or defaults.scene_objects,
        storage=storage,
    )
    try:
        manifest = prepare(args.src, args.dst, options)
    except DataSourceError as error:
        print(f"ssl-ray: {error}", file=sys.stderr)
        return 2
    dst = args.dst.rstrip("/")
    written = manifest.items() if args.source == "openclipart" or args.scenes else [("", manifest)]
    for side, one in written:
        where = f"{dst}/{side}" if side else dst
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(one["skipped"].items())) or "none"
        print(
            f"{one['images']} {'scenes with masks' if args.scenes else 'images'} in {one['shards']} shards "
            f"({one['bytes'] / 2**20:.1f} MiB) "
            f"at {where}; {len(one['classes'])} classes; skipped: {skipped}; manifest: {where}/manifest.json"
        )
    if args.source == "openclipart":
        dropped = manifest["train"]["split"]["categories_dropped"]
        print(f"categories left out: {', '.join(f'{name} ({why})' for name, why in dropped.items()) or 'none'}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from ssl_ray.config import config_from_dict, load_raw
    from ssl_ray.tune.space import load_space
    from ssl_ray.tune.sweep import SweepOptions, check_sweepable

    raw = load_raw(args.config, _overrides(args))
    base = config_from_dict(raw)
    space = load_space(args.space, raw)  # every entry checked before Ray starts
    fields = ("num_samples", "max_concurrent", "search", "scheduler", "grace_period", "reduction_factor", "seed")
    try:
        options = SweepOptions(**{f: getattr(args, f) for f in fields if getattr(args, f) is not None})
    except ValidationError as error:
        problems = [
            f"--{str(item['loc'][0]).replace('_', '-')}: {item['msg']} (got {item['input']!r})"
            for item in error.errors()
        ]
        raise ConfigError("; ".join(problems)) from None
    check_sweepable(base, space, options)

    from ssl_ray.tracking.mlflow_run import ui_command
    from ssl_ray.tune.sweep import run_sweep

    try:
        result = run_sweep(raw, space, options, resume=args.resume, best_config_path=args.best_config)
    except DataSourceError as error:
        print(f"ssl-ray: {error}", file=sys.stderr)
        return 2
    done = {
        status: sum(row.status == status for row in result.trials)
        for status in ("completed", "stopped_early", "failed")
    }
    print()
    print(
        f"Sweep {result.name}: {len(result.trials)} trials in {result.wall_s / 60:.1f} min "
        f"({done['completed']} completed, {done['stopped_early']} stopped early by ASHA, {done['failed']} failed)"
    )
    for row in sorted(result.trials, key=lambda r: -(r.score or 0)):
        score = "n/a" if row.score is None else f"{100 * row.score:.1f}%"
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.values.items())
        print(
            f"  {row.trial_id}  {options.metric} {score:>6}  after {row.epochs}/{row.planned_epochs} epochs  {values}"
        )
    if result.interrupted:
        print(f"Interrupted; continue with: ssl-ray sweep {args.config} --space {args.space} --resume {result.name}")
        return 130
    if result.best is None:
        print("No trial produced a score.", file=sys.stderr)
        return 1
    print(
        f"Best: {result.best.trial_id} with {options.metric} {100 * result.best.score:.1f}%; its pipeline: {result.best_config_path}"
    )
    print(result.best_config_path.read_text())
    print(f"MLflow parent run: {result.parent_run_id}")
    print(f"Open the MLflow UI:  {ui_command(result.tracking_uri, result.experiment_id, result.parent_run_id)}")
    return 0


def _pipeline_arguments(command: argparse.ArgumentParser, config_help: str, resume_name: str, resume_help: str) -> None:
    """What ``pretrain`` and ``sweep`` share: the pipeline, its overrides, --resume, --tracking-uri."""
    command.add_argument("config", help=config_help)
    command.add_argument("overrides", nargs="*", metavar="section.field=value", help="override any config field")
    command.add_argument("--resume", nargs="?", const=True, default=False, metavar=resume_name, help=resume_help)
    command.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")


def _overrides(args: argparse.Namespace) -> list[str]:
    """The command line's overrides, with --tracking-uri as one more."""
    return [*args.overrides, *([f"tracking.tracking_uri={args.tracking_uri}"] if args.tracking_uri else [])]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-ray", description=__doc__)
    # Every command takes it, before or after its own arguments.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # so that a --verbose before the command is not reset
        help="also show Ray's own log lines (default: in Ray's log files only; or set SSL_RAY_VERBOSE=1)",
    )
    parser.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = commands.add_parser(
        "pretrain", parents=[verbose], help="self-supervised pretraining on Ray Train, tracked in MLflow"
    )
    _pipeline_arguments(
        pretrain,
        "pipeline YAML, e.g. pipelines/simclr_fashion_mnist.yaml",
        "RUN_NAME",
        "continue the newest run of this pipeline (or the named Ray run) from its last checkpoint",
    )
    pretrain.set_defaults(handler=_pretrain)

    sweep = commands.add_parser(
        "sweep", parents=[verbose], help="Ray Tune sweep of pretraining runs with ASHA early stopping"
    )
    _pipeline_arguments(
        sweep,
        "pipeline YAML every trial starts from",
        "SWEEP_NAME",
        "continue the newest sweep of this pipeline (or the named one)",
    )
    sweep.add_argument("--space", required=True, help="search space YAML, e.g. tune_spaces/simclr.yaml")
    sweep.add_argument("--num-samples", type=int, help="trials to sample (times the grid's size; default 8)")
    sweep.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster holds)")
    sweep.add_argument("--search", choices=["random", "optuna", "hyperopt"], help="search algorithm (default random)")
    sweep.add_argument("--scheduler", choices=["asha", "none"], help="early stopping (default asha)")
    sweep.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial (default 1)")
    sweep.add_argument("--reduction-factor", type=float, help="ASHA's reduction factor (default 2)")
    sweep.add_argument("--seed", type=int, help="seed of the search algorithm (default 0)")
    sweep.add_argument("--best-config", help="where to write the best trial's pipeline (default ./best-<sweep>.yaml)")
    sweep.set_defaults(handler=_sweep)

    check = commands.add_parser(
        "evaluate", parents=[verbose], help="kNN, linear probe and fine-tuning of a trained encoder, with baselines"
    )
    check.add_argument(
        "source",
        help="an MLflow run id, a registered model (models:/NAME/VERSION) or a checkpoint dir (local or s3://)",
    )
    check.add_argument("overrides", nargs="*", metavar="section.field=value", help="override the run's config")
    check.add_argument(
        "--protocol",
        action="append",
        choices=["knn", "linear", "finetune", "distill", "segment"],
        help="repeat for several (default: knn and linear); distill: the fine-tuned network taught to a student "
        "on the unlabelled images (SimCLR v2), with finetune; segment: a linear head on the frozen feature map, "
        "mIoU on --scenes",
    )
    check.add_argument(
        "--scenes",
        help="for --protocol segment: the folder or s3:// prefix of ssl-ray prepare --scenes (its train/, test/)",
    )
    check.add_argument(
        "--reference",
        action="append",
        metavar="SOURCE",
        help="another trained encoder (run id, models:/, checkpoint) measured beside it on the same sets by the "
        "frozen and segment protocols, e.g. a supervised run: the dense table's supervised baseline (repeat for "
        "several)",
    )
    check.add_argument(
        "--labels",
        action="append",
        type=_label_fraction,
        metavar="PCT%",
        help="finetune: share of the labels, 1%%, 10%% or 100%% (repeat for several; default 10%%)",
    )
    check.add_argument(
        "--finetune-epochs",
        type=int,
        help="finetune: epochs (default: 60 at 1%%, 30 at 10%%, the pretraining's at 100%%)",
    )
    check.add_argument("--config", help="pipeline YAML, for a checkpoint that holds no config")
    check.add_argument(
        "--train-size",
        type=int,
        help="a class-stratified sample of N labelled training images, drawn with --seed (default: all)",
    )
    check.add_argument(
        "--test-size", type=int, help="a class-stratified sample of N test images, drawn with --seed (default: all)"
    )
    check.add_argument("--no-baselines", action="store_true", help="skip the random-init and raw-pixel baselines")
    check.add_argument("--no-diagnostics", action="store_true", help="skip the geometry numbers and the plots")
    check.add_argument(
        "--seed", type=int, default=0, help="seed of the samples, the probe's held-out split and the views"
    )
    check.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    check.set_defaults(handler=_evaluate)

    shards = commands.add_parser(
        "prepare",
        parents=[verbose],
        help="write a folder or bucket of images (or Fashion-MNIST, or OpenClipart) as Parquet shards",
    )
    shards.add_argument(
        "src",
        help="folder or s3://bucket/prefix of images (class sub-folders give labels), or the Fashion-MNIST directory/URL",
    )
    shards.add_argument("dst", help="empty folder or s3://bucket/prefix for the shards and manifest.json")
    shards.add_argument(
        "--source",
        choices=["images", "fashion_mnist", "openclipart"],
        default="images",
        help="openclipart: Debian's openclipart-png folder, written as DST/train and DST/test",
    )
    shards.add_argument("--split", choices=["train", "test"], default="train", help="Fashion-MNIST split")
    shards.add_argument(
        "--size", type=int, help="openclipart: side of the white squares the drawings are fitted on (64)"
    )
    shards.add_argument("--test-share", type=float, help="openclipart: each category's share in the test set (0.2)")
    shards.add_argument(
        "--scenes",
        type=int,
        help="openclipart or fashion_mnist: N scenes to train on (and the test share's worth to test on) of 1 to "
        "--scene-objects objects each with their per-pixel class masks, as DST/train and DST/test",
    )
    shards.add_argument("--scene-size", type=int, help="the scenes' side in px (96 openclipart, 56 fashion_mnist)")
    shards.add_argument("--scene-objects", type=int, help="the most objects in a scene (3)")
    shards.add_argument("--shard-mb", type=float, default=64.0, help="target shard size in MiB (default 64)")
    shards.add_argument("--seed", type=int, default=0, help="seed of the random order images are written in")
    shards.add_argument(
        "overrides",
        nargs="*",
        metavar="storage.field=value",
        help="where the object store is, as in a pipeline: storage.endpoint_url=http://host:9000 storage.region=...",
    )
    shards.set_defaults(handler=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options too (``--resume train.epochs=4``).
    for flag in ("--endpoint-url", "--region"):
        if any(item == flag or item.startswith(flag + "=") for item in argv or sys.argv[1:]):
            field = flag.removeprefix("--").replace("-", "_")
            parser.error(f"{flag} is spelled storage.{field}=VALUE in every command")
    args, rest = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    stray = [item for item in rest if "=" not in item or item.startswith("-") or not takes_overrides]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    from ssl_ray.console import set_verbose

    set_verbose(args.verbose)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"ssl-ray: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
