"""Training curves as a PNG for the MLflow run (the UI charts metrics too; the PNG travels
with exported artifacts and reports)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(
    path: str | Path,
    loss: list[tuple[int, float]],
    knn: list[tuple[int, float]],
    baselines: dict[str, float],
    title: str,
) -> Path:
    """Loss per epoch (left) and kNN top-1 per epoch with horizontal baseline lines (right)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if loss:
        left.plot(*zip(*loss), marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    if knn:
        right.plot(*zip(*knn), marker="o", label="encoder")
    for (name, value), style in zip(baselines.items(), ("--", ":", "-.")):
        right.axhline(value, linestyle=style, color="grey", label=name)
    right.set(xlabel="epoch (0 = random init)", ylabel="kNN top-1", title="kNN monitor")
    right.legend(loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
