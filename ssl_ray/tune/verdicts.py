"""The scheduler's verdict on each epoch, handed to the trial's training loop.

Ray Tune stops a trial by ending its actor, which reaches the Ray Train workers of a
pretraining run only after they have trained on for a while (a short epoch can be over twice
before the stop lands). Here the scheduler posts its verdict on every reported epoch to a
small named actor. The loop's rank 0 asks for the verdict on the epoch it just reported and
trains on while it comes: every few steps it looks whether the answer is in (a stop ends the
epoch there, unreported), and before reporting the next epoch it waits for it if it is not.
So a trial ASHA stops after epoch k logs exactly k epochs, each once, and closes its own
MLflow run; the scheduler's reaction time overlaps with training instead of adding to every
epoch, and a stopped trial wastes a few steps, not an epoch.

Why not Tune's own stop: with Ray Train inside a trial, Train's controller hands each report
to Tune through a queue and trains on (``TuneReportCallback``), so the scheduler's STOP reaches
the workers only when Tune ends the trial's actor, an epoch or two later for short epochs,
possibly after the next epoch was logged and possibly before the stopped epoch was. Tune has
no hook to hold Train's next report until the scheduler has decided; this board is that hook.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import ray
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

VERDICT_WAIT_S = 120.0  # longer means Tune is stuck; the trial then carries on


def board_name(sweep_name: str) -> str:
    return f"ssl-ray-verdicts-{sweep_name}"


@ray.remote(num_cpus=0)
class VerdictBoard:
    def __init__(self) -> None:
        self.verdicts: dict[tuple[str, int], bool] = {}
        self.posted = asyncio.Event()

    async def post(self, trial_id: str, epoch: int, stop: bool) -> None:
        self.verdicts[(trial_id, epoch)] = stop
        self.posted.set()
        self.posted = asyncio.Event()

    async def wait(self, trial_id: str, epoch: int, timeout_s: float = VERDICT_WAIT_S) -> bool | None:
        """True: stop; False: go on; None: no verdict within ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (trial_id, epoch) not in self.verdicts:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self.posted.wait(), remaining)
            except TimeoutError:
                return None
        return self.verdicts[(trial_id, epoch)]


def start_board(sweep_name: str):
    """The sweep's board, living as long as the sweep's driver."""
    return VerdictBoard.options(name=board_name(sweep_name), get_if_exists=True).remote()


class _PostsVerdicts:
    """Mixed into a scheduler: every decision on an epoch's result is posted to the board
    (found by name, so a scheduler restored on ``--resume`` finds the new one).

    A stop is not passed on to Tune at first: Tune would end the trial's actor, and with it
    Ray Train's controller, possibly before the controller has written the stopped epoch to
    MLflow (it does so right after handing the report to Tune). The trial stops itself at the
    verdict instead and closes its run. Only a trial that reports again after being told to
    stop (its loop missed the verdict) is stopped by Tune."""

    board: str
    told_to_stop: set[str]

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self.told_to_stop:
            return TrialScheduler.STOP
        decision = super().on_trial_result(tune_controller, trial, result)
        if "epoch" not in result:
            return decision
        stop = decision == TrialScheduler.STOP
        ray.get_actor(self.board).post.remote(trial.trial_id, int(result["epoch"]), stop)
        if stop:
            self.told_to_stop.add(trial.trial_id)
            return TrialScheduler.CONTINUE
        return decision


class VerdictASHA(_PostsVerdicts, ASHAScheduler):
    def __init__(self, board: str, **asha) -> None:
        super().__init__(**asha)
        self.board = board
        self.told_to_stop = set()


class VerdictFIFO(_PostsVerdicts, FIFOScheduler):
    def __init__(self, board: str) -> None:
        super().__init__()
        self.board = board
        self.told_to_stop = set()


@dataclass(frozen=True)
class VerdictGate:
    """What a trial's training loop holds: ``ask(epoch)`` puts the question without waiting,
    ``answer(question, wait)`` reads it: stop or not, or None while it is not in (never with
    ``wait``)."""

    board: str
    trial_id: str

    def ask(self, epoch: int) -> ray.ObjectRef:
        return ray.get_actor(self.board).wait.remote(self.trial_id, epoch)

    @staticmethod
    def answer(question: ray.ObjectRef, wait: bool) -> bool | None:
        if not wait and not ray.wait([question], timeout=0)[0]:
            return None
        return bool(ray.get(question))  # None (no verdict in VERDICT_WAIT_S): carry on
