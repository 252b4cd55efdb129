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


def plot_scores(
    path: str | Path,
    trials: list[tuple[dict, float | None, str]],
    fields: list[str],
    log_scale: dict[str, bool],
    metric: str,
) -> Path:
    """One panel per searched field: each trial's final score against its value, trials
    stopped early marked apart (their score is from an earlier epoch)."""
    figure, axes = plt.subplots(1, len(fields), figsize=(4.2 * len(fields), 3.8), squeeze=False)
    styles = {"completed": ("o", "tab:blue"), "stopped_early": ("x", "tab:orange"), "failed": ("s", "tab:red")}
    for axis, field in zip(axes[0], fields):
        values = [values.get(field) for values, _, _ in trials]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({str(v) for v in values})
        for status, (marker, colour) in styles.items():
            points = [
                (values[i] if numeric else labels.index(str(values[i])), score)
                for i, (_, score, state) in enumerate(trials)
                if state == status and score is not None
            ]
            if points:
                axis.scatter(*zip(*points), marker=marker, color=colour, label=status.replace("_", " "))
        if not numeric:
            axis.set_xticks(range(len(labels)), labels)
        elif log_scale.get(field):
            axis.set_xscale("log")
        axis.set(xlabel=field, ylabel=metric)
        axis.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
