"""The read order of file sources: every unit (an image file, or a row group of a shard) in a
seeded random permutation drawn afresh for each pass, cut into read tasks.

Ray Data's ``randomize_block_order`` only permutes whole blocks, so a listing cut into blocks
in its own order (one class folder after another) gives blocks of one or two classes, and
batches of two to four classes in ten: contrastive methods, whose negatives are the batch,
learn far less from that. Permuting the units before they are cut makes every read task a
uniform draw from the whole set, and since Ray Data asks a datasource for its read tasks at
the start of every execution (every epoch of a training run), each epoch gets a new draw.

Cost: the permutation of the unit indices on the node that plans the read (the driver, or
the training split's coordinator); no image byte moves. ``benchmarks/listing_order.py``
times it on a million-file listing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask


def units_per_task(rows: Sequence[int], target_rows: int, spread_over_cpus: bool = True) -> int:
    """Units per read task: about ``target_rows`` rows; with ``spread_over_cpus``, small data is
    still cut into at least two tasks per CPU of the cluster, so no core idles on a dataset of
    a few shards (the reason the readers were written: benchmarks/README.md, "Data pipeline")."""
    if not len(rows):
        return 1
    wanted = target_rows
    if spread_over_cpus:
        cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
        wanted = min(target_rows, max(1, -(-int(sum(rows)) // (2 * cpus))))
    return max(1, round(wanted / max(1.0, float(np.median(rows)))))


def _as_blocks(read: Callable[[list[Any]], Iterable[dict[str, np.ndarray]]], units: list[Any]):
    for batch in read(units):
        yield BlockAccessor.batch_to_block(batch)


class ShuffledUnits(Datasource):
    """``read(units)`` yields numpy batches for a list of units; ``rows[i]`` is unit ``i``'s
    row count (what Ray Data is told to expect). ``seed`` None: listing order, one pass like
    the next (the kNN bank and queries, where order does not matter)."""

    def __init__(
        self,
        units: Sequence[Any],
        rows: Sequence[int],
        units_per_task: int,
        read: Callable[[list[Any]], Iterable[dict[str, np.ndarray]]],
        seed: int | None,
        name: str,
    ) -> None:
        self._units = list(units)
        self._rows = np.asarray(rows, dtype=np.int64)
        self._units_per_task = max(1, units_per_task)
        self._read = read
        self._seed = seed
        self._name = name
        self._draws = 0  # passes planned so far: each gets its own permutation

    @property
    def num_tasks(self) -> int:
        return max(1, -(-len(self._units) // self._units_per_task))

    def dataset(self):
        """The read as a dataset. The block count is the task count: asked for more (its
        default is about 200), Ray Data splits each task's output into that many blocks, of
        a row or two, in unit order, which the per-block shuffle of the views could not mix."""
        return ray.data.read_datasource(self, override_num_blocks=self.num_tasks)

    def get_name(self) -> str:
        return self._name

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def order(self) -> np.ndarray:
        """The next pass's unit order."""
        if self._seed is None:
            return np.arange(len(self._units))
        self._draws += 1
        return np.random.default_rng([self._seed, self._draws]).permutation(len(self._units))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        order = self.order()
        tasks = []
        for start in range(0, len(order), self._units_per_task):
            picked = order[start : start + self._units_per_task]
            metadata = BlockMetadata(
                num_rows=int(self._rows[picked].sum()), size_bytes=None, exec_stats=None, input_files=None
            )
            units = [self._units[i] for i in picked]
            tasks.append(
                ReadTask(
                    functools.partial(_as_blocks, self._read, units), metadata, per_task_row_limit=per_task_row_limit
                )
            )
        return tasks
