"""Per-epoch metrics into MLflow exactly once, however often workers fail and restart.

Ray Train restarts a failed worker group from the last checkpoint it registered, so an epoch
finished after that checkpoint is trained again. If workers logged their own epoch metrics,
such an epoch would appear twice in MLflow (once from the lost attempt). This callback runs in
Ray Train's controller instead, which calls it only after every worker has reported an epoch
and after it has registered that report's checkpoint: an epoch is written to MLflow once a
checkpoint at or after it is safe (held back until then when checkpoints are sparser than
epochs), and an epoch reported again after a restart replaces the held-back copy.
"""

from __future__ import annotations

from typing import Any

# Ray's developer-level callback interfaces: the public UserCallback gets reports but not the
# end of training, which is when epochs held back (sparse checkpoints) become final.
from ray.train.v2._internal.execution.callback import ControllerCallback, ReportCallback

from ssl_ray.tracking.mlflow_run import RunTracker

EPOCH_KEY = "epoch"


class EpochMetricsLogger(ReportCallback, ControllerCallback):
    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.logged_epochs: list[int] = []
        self._tracker: RunTracker | None = None

    def __getstate__(self) -> dict[str, Any]:  # shipped to the controller actor without a client
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self) -> RunTracker:
        if self._tracker is None:
            self._tracker = RunTracker(self.tracking_uri, self.run_id)
        return self._tracker

    def after_report(self, training_report, metrics: list[dict[str, Any]]) -> None:
        reported = metrics[0]  # rank 0's: the one that evaluates (kNN) and counts skips
        epoch = int(reported[EPOCH_KEY])
        # Reported again: the attempt that reported it first was lost before a checkpoint.
        self.pending = [(e, m) for e, m in self.pending if e < epoch]
        values = {k: float(v) for k, v in reported.items() if k != EPOCH_KEY and isinstance(v, int | float)}
        self.pending.append((epoch, values))
        if training_report.checkpoint is not None:
            self.flush()

    def after_controller_finish(self, result) -> None:
        # Training is over: nothing reported can be redone any more.
        if getattr(result, "error", None) is None:
            self.flush()

    def flush(self) -> None:
        for epoch, values in self.pending:
            self.tracker.log_metrics(values, step=epoch)
            self.logged_epochs.append(epoch)
        self.pending = []
