"""Live progress in the driver's terminal.

Rank 0 posts its position to a tiny actor; a thread in the driver polls it and draws a real
tqdm bar per epoch, plus one summary line per epoch. (Ray's ``tqdm_ray`` relays bars through
worker logs, which Ray Train's workers do not render here: each update came out as a blank
log line.) Without a terminal there is no bar, only the summary lines.
"""

from __future__ import annotations

import threading
from typing import Any

import ray
from tqdm import tqdm


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self) -> None:
        self._position: dict[str, Any] = {}
        self._lines: list[str] = []

    def post(self, position: dict[str, Any]) -> None:
        self._position = position

    def say(self, line: str) -> None:
        self._lines.append(line)

    def read(self, seen_lines: int) -> tuple[dict[str, Any], list[str]]:
        return self._position, self._lines[seen_lines:]


class ProgressPrinter:
    """Driver side: ``with ProgressPrinter(board, show_bar):`` around ``trainer.fit()``."""

    def __init__(self, board, show_bar: bool, interval_s: float = 0.5) -> None:
        self.board = board
        self.show_bar = show_bar
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._bar: tqdm | None = None
        self._bar_epoch = None
        self._seen = 0

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._poll()
        if self._bar is not None:
            self._bar.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._poll()
            except Exception:  # the board dies with the cluster; progress is best-effort
                return

    def _poll(self) -> None:
        position, lines = ray.get(self.board.read.remote(self._seen), timeout=10)
        self._seen += len(lines)
        if self.show_bar and position:
            if position["epoch"] != self._bar_epoch:
                if self._bar is not None:
                    self._bar.close()
                self._bar = tqdm(
                    total=position["steps"], desc=f"epoch {position['epoch']}/{position['epochs']}", unit="step"
                )
                self._bar_epoch = position["epoch"]
            self._bar.n = position["step"]
            self._bar.set_postfix(loss=f"{position['loss']:.3f}", refresh=False)
            self._bar.refresh()
        for line in lines:
            tqdm.write(line)
