"""Counting what decoding skipped, across every Ray Data task, per reason.

Decoding runs in many processes; each batch sends its counts (and a few example paths of what
it skipped) to one small actor, which the training loop empties after every epoch and the
``prepare`` command reads at the end.
"""

from __future__ import annotations

from collections import Counter

import ray

EXAMPLES_PER_REASON = 20


@ray.remote(num_cpus=0)
class SkipCounter:
    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self.kept = 0
        self.examples: dict[str, list[str]] = {}

    def add(self, kept: int, skipped: dict[str, int], examples: dict[str, list[str]]) -> None:
        self.kept += kept
        self.skipped.update(skipped)
        for reason, paths in examples.items():
            known = self.examples.setdefault(reason, [])
            known.extend(paths[: EXAMPLES_PER_REASON - len(known)])

    def take(self) -> dict[str, int]:
        """Skips per reason since the last ``take`` (one epoch's worth in training)."""
        counts = dict(self.skipped)
        self.skipped.clear()
        return counts

    def summary(self) -> dict:
        return {"kept": self.kept, "skipped": dict(self.skipped), "examples": self.examples}
