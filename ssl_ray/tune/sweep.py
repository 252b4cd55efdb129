"""``ssl-ray sweep``: Ray Tune over whole pretraining runs, tracked in MLflow.

Each trial is one ``run_pretraining`` call: its own Ray Train workers, checkpoints and MLflow
run (nested under the sweep's parent run), with the trial's values set into the pipeline.
Every epoch's metrics go from Ray Train to Ray Tune (``TuneReportCallback``), where ASHA stops
weak trials on the kNN top-1. The sweep driver then closes the runs of stopped trials, and on
the parent run logs the best config (a pipeline YAML, also written locally), a table of every
trial and a plot of the score against each searched field.

An interrupted sweep (Ctrl-C, a lost driver) resumes with ``--resume``: Tune restores its
experiment state, finished trials are kept, and a trial cut off part-way continues from its
own last Ray Train checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field

from ssl_ray.config import ConfigError, PipelineConfig, config_from_dict, merge_dotted
from ssl_ray.console import start_ray
from ssl_ray.strict import NoBoolNumbers
from ssl_ray.tune.space import SearchSpace, trial_values

SWEEP_TAG = "ssl_ray.sweep"
TRIAL_TAG = "ssl_ray.trial_id"
STOPPED_EARLY_TAG = "ssl_ray.stopped_early"
TRIAL_DRIVER_MEMORY = 512 * 2**20
DATA_CPUS_PER_TRIAL = 1.0  # decoding and views run in Ray Data tasks beside the workers


class SweepOptions(NoBoolNumbers):
    """How to search; what each trial runs is the pipeline config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_samples: int = Field(default=8, gt=0)  # trials (times the grid's size, if any)
    # Trials at once; None = as many as the cluster's CPUs (GPUs) hold, each trial taking
    # train.num_workers x train.cpus_per_worker CPUs (and a GPU per worker with GPUs) plus a
    # CPU for its data pipeline.
    max_concurrent: int | None = Field(default=None, gt=0)
    search: Literal["random", "optuna", "hyperopt"] = "random"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(default=1, gt=0)  # epochs every trial runs before ASHA may stop it
    reduction_factor: float = Field(default=2.0, gt=1.0)
    metric: str = "knn_top1"
    mode: Literal["max", "min"] = "max"
    seed: int = 0  # of the search algorithm


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    values: dict[str, Any]
    score: float | None
    epochs: int
    planned_epochs: int
    status: str  # completed | stopped_early | failed
    mlflow_run_id: str | None


@dataclass(frozen=True)
class SweepResult:
    name: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    trials: list[TrialRow]
    best: TrialRow | None
    best_config_path: Path | None
    wall_s: float
    interrupted: bool

    @property
    def stopped_early(self) -> int:
        return sum(row.status == "stopped_early" for row in self.trials)


def check_sweepable(config: PipelineConfig, space: SearchSpace, options: SweepOptions) -> None:
    """Reject, before any trial, what would only fail later."""
    if options.metric.startswith("knn") and config.data.source != "fashion_mnist" and config.data.val_path is None:
        raise ConfigError(
            f"sweep: the metric {options.metric} comes from the kNN monitor, which needs labelled "
            "held-out images: set data.val_path"
        )
    if options.search != "random" and space.has_grid:
        raise ConfigError(f"sweep: grid entries need --search random ({options.search} samples every field)")
    if options.search == "optuna":
        _require("optuna", "optuna")
    if options.search == "hyperopt":
        _require("hyperopt", "hyperopt")


def _require(module: str, package: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"sweep: --search {module} needs the {package} package (pip install {package})") from None


def _search_algorithm(options: SweepOptions, max_concurrent: int):
    if options.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=options.seed))
    if options.search == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=options.seed)
    from ray.tune.search import BasicVariantGenerator

    # Random and grid search generate their trials up front: Tune's max_concurrent_trials
    # does not reach them, their own max_concurrent does.
    return BasicVariantGenerator(random_state=options.seed, max_concurrent=max_concurrent)


def _scheduler(config: PipelineConfig, space: SearchSpace, options: SweepOptions, board: str):
    from ssl_ray.tune.verdicts import VerdictASHA, VerdictFIFO

    if options.scheduler == "none":
        return VerdictFIFO(board)
    return VerdictASHA(
        board,
        time_attr="epoch",
        max_t=space.largest("train.epochs", config.train.epochs),
        grace_period=options.grace_period,
        reduction_factor=options.reduction_factor,
        # A trial at its last epoch finishes on its own (encoder and plots logged, run closed)
        # rather than being stopped by the scheduler as it reaches max_t.
        stop_last_trials=False,
    )


def trial_config(raw: dict[str, Any], values: dict[str, Any], run_name: str | None) -> PipelineConfig:
    """The pipeline a trial runs: the base with the trial's values, the kNN every epoch (what
    ASHA compares) and the trial's own run name."""
    fixed = {"eval.knn_every_epochs": 1}
    if run_name is not None:
        fixed["train.run_name"] = run_name
    return config_from_dict(merge_dotted(raw, {**values, **fixed}))


def run_trial(params: dict[str, Any], raw: dict[str, Any], sweep_name: str, parent_run_id: str) -> None:
    """One trial (inside a Tune trial actor): a whole pretraining run, resumed from its own
    checkpoint when the sweep is resumed."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ssl_ray.train.storage import latest_run_name
    from ssl_ray.train.trainer import SweepTrial, run_pretraining
    from ssl_ray.tune.verdicts import VerdictGate, board_name

    trial_id = tune.get_context().get_trial_id()
    run_prefix = f"{sweep_name}-{trial_id}"
    config = trial_config(raw, trial_values(params), run_prefix)
    earlier = latest_run_name(config.train.storage_path, run_prefix, config.storage)
    trial = SweepTrial(
        parent_run_id=parent_run_id,
        tags={SWEEP_TAG: sweep_name, TRIAL_TAG: trial_id},
        callbacks=(TuneReportCallback(),),
        epoch_gate=VerdictGate(board_name(sweep_name), trial_id),
    )
    run_pretraining(config, resume=earlier or False, trial=trial)


def _cluster_share(config: PipelineConfig) -> int:
    """How many trials the cluster holds at once: each takes its workers' CPUs (GPUs) and
    ``DATA_CPUS_PER_TRIAL`` for its Ray Data tasks, which would otherwise starve."""
    import ray

    resources = ray.cluster_resources()
    t = config.train
    fits = int(resources.get("CPU", 1) // (t.num_workers * t.cpus_per_worker + DATA_CPUS_PER_TRIAL))
    if resources.get("GPU", 0) and t.use_gpu is not False:
        fits = min(fits, int(resources["GPU"] // t.num_workers))
    return max(1, fits)


def _rows(grid, client, parent_run_id: str, raw: dict[str, Any], options: SweepOptions) -> list[TrialRow]:
    children = {
        run.data.tags.get(TRIAL_TAG): run
        for run in client.search_runs(
            [client.get_run(parent_run_id).info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            max_results=10_000,
        )
    }
    rows = []
    for result in grid:
        if not result.config:  # a trial an interruption left before its first result
            continue
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or result.path.rsplit("_", 2)[-2]
        values = trial_values(result.config)
        planned = trial_config(raw, values, None).train.epochs
        epochs = int(metrics.get("epoch", 0))
        score = metrics.get(options.metric)
        if result.error is not None:
            status = "failed"
        elif epochs < planned:
            status = "stopped_early"
        else:
            status = "completed"
        child = children.get(trial_id)
        rows.append(
            TrialRow(
                trial_id=trial_id,
                values=values,
                score=float(score) if score is not None and math.isfinite(score) else None,
                epochs=epochs,
                planned_epochs=planned,
                status=status,
                mlflow_run_id=child.info.run_id if child else None,
            )
        )
    return sorted(rows, key=lambda row: row.trial_id)


def _close_children(client, rows: list[TrialRow]) -> None:
    """Trials ASHA stopped (or that failed) were ended mid-training, their run left open or
    marked failed by the interruption. Close each with the reason, so the UI shows which
    trials were cut short."""
    for row in rows:
        if row.mlflow_run_id is None:
            continue
        client.set_tag(row.mlflow_run_id, STOPPED_EARLY_TAG, str(row.status == "stopped_early").lower())
        status = client.get_run(row.mlflow_run_id).info.status
        if row.status == "stopped_early" and status != "KILLED":
            client.set_terminated(row.mlflow_run_id, "KILLED")
        elif row.status == "failed" and status == "RUNNING":
            client.set_terminated(row.mlflow_run_id, "FAILED")


def best_trial(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The best final score among trials that ran all their epochs (a trial stopped early is
    scored at an earlier epoch); among all scored trials if none did."""
    scored = [row for row in rows if row.score is not None]
    pool = [row for row in scored if row.status == "completed"] or scored
    if not pool:
        return None
    return (max if mode == "max" else min)(pool, key=lambda row: row.score)


def write_best_config(path: Path, raw: dict[str, Any], best: TrialRow, name: str, metric: str) -> Path:
    config = trial_config(raw, best.values, None)
    header = (
        f"# Best trial of sweep {name}: {best.trial_id}, {metric} {best.score:.4f} after {best.epochs} epochs.\n"
        "# Searched: " + ", ".join(f"{key}={value}" for key, value in best.values.items()) + "\n"
        f"# Run it: ssl-ray pretrain {path.name}\n"
    )
    path.write_text(header + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def write_table(path: Path, rows: list[TrialRow], fields: list[str], metric: str) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial_id", *fields, metric, "epochs", "planned_epochs", "status", "mlflow_run_id"])
        for row in rows:
            writer.writerow(
                [
                    row.trial_id,
                    *(row.values.get(field) for field in fields),
                    "" if row.score is None else f"{row.score:.6f}",
                    row.epochs,
                    row.planned_epochs,
                    row.status,
                    row.mlflow_run_id or "",
                ]
            )
    return path


@contextlib.contextmanager
def _ctrl_c_stops_gracefully():
    """Ctrl-C during ``fit()``: Tune's own graceful stop (state saved, trials ended), through
    the SIGUSR1 handler Tune installs, and an event that says it happened (Tune's result does
    not: an interrupted trial can come back as terminated). A second Ctrl-C ends at once."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_ctrl_c(signum, frame):
        interrupted.set()
        signal.signal(signal.SIGINT, previous)
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt  # fit() has not set up its handler yet
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    saved = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
        if saved is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved


def run_sweep(
    raw: dict[str, Any],
    space: SearchSpace,
    options: SweepOptions,
    resume: bool | str = False,
    best_config_path: str | Path | None = None,
) -> SweepResult:
    """``raw``: the pipeline as ``config.load_raw`` gives it (validated here, with the space)."""
    import ray

    from ssl_ray.tune.verdicts import start_board

    base = config_from_dict(raw)
    check_sweepable(base, space, options)
    name, parent, runs = _open_sweep(base, space, options, resume)
    if not ray.is_initialized():
        start_ray()
    board = start_board(name)  # noqa: F841 (held: the board lives while the sweep runs)
    tuner = _tuner(base, raw, space, options, resume, name, parent, runs)
    started = time.time()
    try:
        with _ctrl_c_stops_gracefully() as ctrl_c:
            grid = tuner.fit()
    except BaseException:
        parent.end("FAILED")
        raise
    wall = time.time() - started

    rows = _rows(grid, parent.client, parent.run_id, raw, options)
    # Ctrl-C returns from fit() too, with the state saved and some trials unfinished.
    finished = grid.num_terminated + grid.num_errors
    outcome = (name, parent.run_id, parent.experiment_id, parent.tracking_uri, rows)
    if ctrl_c.is_set() or finished < options.num_samples * space.grid_size:
        # Tune saved its state; the trials' runs are left to the resumed sweep.
        parent.set_tag("ssl_ray.resume", f"ssl-ray sweep ... --resume {name}")
        parent.end("KILLED")
        return SweepResult(*outcome, None, None, wall, True)
    _close_children(parent.client, rows)
    best = best_trial(rows, options.mode)
    out_path = _log_sweep_outcome(parent, raw, space, options, rows, best, name, best_config_path, wall)
    parent.end("FINISHED" if best is not None else "FAILED")
    return SweepResult(*outcome, best, out_path, wall, False)


def _open_sweep(base: PipelineConfig, space: SearchSpace, options: SweepOptions, resume: bool | str):
    """The sweep's name, its parent MLflow run (found again on ``resume``) and its storage,
    checked with the data locations before Ray starts."""
    from ssl_ray.data.sources import check_data_locations
    from ssl_ray.tracking.mlflow_run import RunTracker, resolve_tracking_uri
    from ssl_ray.train.storage import RunStorage, fresh_run_name, latest_run_name
    from ssl_ray.train.trainer import read_fitted_from

    tracking_uri = resolve_tracking_uri(base.tracking.tracking_uri)
    runs = RunStorage.resolve(base.train.storage_path, base.storage)
    runs.check(base.storage)
    check_data_locations(base)
    read_fitted_from(base, tracking_uri)  # a bad train.fitted_from is said once, not by every trial
    prefix = f"{base.run_prefix}-sweep"
    if resume:
        name = resume if isinstance(resume, str) else latest_run_name(runs.url, prefix, base.storage)
        parent = RunTracker.find(tracking_uri, base.tracking.experiment, name) if name else None
        if name is None or parent is None:
            raise ConfigError(f"sweep: nothing to resume: no sweep named {name or prefix + '-*'} under {runs.url}")
        parent.set_running()
        return name, parent, runs
    name = fresh_run_name(prefix)
    parent = RunTracker.start(tracking_uri, base, name, tags={SWEEP_TAG: name, "ssl_ray.kind": "sweep"})
    parent.log_params(
        {
            "sweep.space": space.source,
            **{f"sweep.{key}": str(value) for key, value in options.model_dump().items()},
            **{f"space.{d.field}": f"{d.kind}{list(d.args)}" for d in space.dimensions},
        }
    )
    return name, parent, runs


def _tuner(base, raw, space, options, resume, name: str, parent, runs):
    """A new Tuner over pretraining trials, or the interrupted sweep's, restored."""
    from ray import tune

    from ssl_ray.tune.verdicts import board_name

    trial_raw = merge_dotted(raw, {"tracking.tracking_uri": parent.tracking_uri})  # trials log where the parent is
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, raw=trial_raw, sweep_name=name, parent_run_id=parent.run_id),
        # The trial only drives (reads the data's index, starts Ray Train, waits): its workers
        # hold the CPUs and GPUs. A CPU here would leave a 2-CPU machine with 2 one-CPU
        # workers unable to run any trial, so it reserves memory alone.
        {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY},
    )
    if resume:
        return tune.Tuner.restore(
            f"{runs.url}/{name}",
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=space.param_space(),
            storage_filesystem=runs.filesystem,
        )
    max_concurrent = options.max_concurrent or _cluster_share(base)
    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=options.metric,
            mode=options.mode,
            search_alg=_search_algorithm(options, max_concurrent),
            scheduler=_scheduler(base, space, options, board_name(name)),
            num_samples=options.num_samples,
            max_concurrent_trials=None if options.search == "random" else max_concurrent,
        ),
        run_config=tune.RunConfig(name=name, storage_path=runs.path, storage_filesystem=runs.filesystem, verbose=1),
    )


def _log_sweep_outcome(parent, raw, space, options, rows, best, name, best_config_path, wall: float) -> Path | None:
    """The trial table, the score plot, the best config (written and logged) and the summary
    metrics into the parent run; returns where the best config was written."""
    from ssl_ray.tracking.plots import plot_scores

    out_path = None
    with tempfile.TemporaryDirectory() as out:
        out = Path(out)
        fields = space.fields
        parent.log_artifact(write_table(out / "trials.csv", rows, fields, options.metric))
        plotted = [(row.values, row.score, row.status) for row in rows]
        log_scale = {d.field: d.log_scale for d in space.dimensions}
        parent.log_artifact(
            plot_scores(out / "score_vs_params.png", plotted, fields, log_scale, options.metric), "plots"
        )
        if best is not None:
            out_path = Path(best_config_path or f"best-{name}.yaml").resolve()
            write_best_config(out_path, raw, best, name, options.metric)
            parent.log_artifact(out_path)
            parent.log_params({f"best.{key}": str(value) for key, value in best.values.items()})
            parent.set_tag("ssl_ray.best_trial", best.trial_id)
    summary = {
        f"best_{options.metric}": best.score if best else float("nan"),
        "trials": len(rows),
        "trials_stopped_early": sum(row.status == "stopped_early" for row in rows),
        "trials_failed": sum(row.status == "failed" for row in rows),
        "sweep_wall_s": wall,
    }
    parent.log_metrics(summary, step=0)
    return out_path
