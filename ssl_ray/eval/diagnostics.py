"""Pictures of a representation, as PNGs for the MLflow run: the embedding spectrum, a 2-D
map of the test embeddings (t-SNE), nearest-neighbour retrieval, and the views trained on."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402


def _show(ax, image: np.ndarray) -> None:
    """An image as the sources give it, (H, W) or (H, W, C), or as views are, (C, H, W)."""
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_spectrum(path: Path, singular_values: torch.Tensor, effective_rank: float, title: str) -> None:
    values = singular_values.cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(np.arange(1, len(values) + 1), np.maximum(values, 1e-12), marker=".", markersize=3)
    ax.set_xlabel("index (largest first)")
    ax.set_ylabel("singular value of the centred embeddings")
    ax.set_title(f"{title}: effective rank {effective_rank:.1f} of {len(values)}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_embedding_map(path: Path, features: np.ndarray, labels: np.ndarray, classes: list[str], seed: int) -> None:
    points = TSNE(n_components=2, init="pca", perplexity=30, random_state=seed).fit_transform(features)
    fig, ax = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, name in enumerate(classes):
        chosen = labels == index
        ax.scatter(points[chosen, 0], points[chosen, 1], s=4, color=colours(index % colours.N), label=name)
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(f"t-SNE of {len(features)} test embeddings, coloured by label")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def nearest(features: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (Q, k) of each query row's k most cosine-similar rows of ``features``, itself excluded."""
    x = F.normalize(features.float(), dim=1)
    similarity = x[queries] @ x.T
    similarity[torch.arange(len(queries)), queries] = -2.0
    return similarity.topk(k, dim=1).indices


def plot_retrieval(path: Path, images: np.ndarray, labels: np.ndarray, queries, neighbours) -> None:
    """One row per query: the query, then its neighbours framed green (same label) or red."""
    rows, k = neighbours.shape
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.2 * (k + 1), 1.3 * rows), squeeze=False)
    for row, (query, found) in enumerate(zip(queries.tolist(), neighbours.tolist())):
        _show(axes[row, 0], images[query])
        axes[row, 0].set_title("query", fontsize=7)
        for col, index in enumerate(found, start=1):
            _show(axes[row, col], images[index])
            colour = "tab:green" if labels[index] == labels[query] else "tab:red"
            for spine in axes[row, col].spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5)
    fig.suptitle("nearest neighbours by cosine similarity (green: same label)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_views(path: Path, images: np.ndarray, views: list[np.ndarray]) -> None:
    """Each image beside the views the run's recipe makes of it."""
    rows = len(images)
    fig, axes = plt.subplots(rows, 1 + len(views), figsize=(1.3 * (1 + len(views)), 1.3 * rows), squeeze=False)
    for row in range(rows):
        _show(axes[row, 0], images[row])
        for col, view in enumerate(views, start=1):
            _show(axes[row, col], view[row])
    axes[0, 0].set_title("image", fontsize=8)
    for col in range(1, 1 + len(views)):
        axes[0, col].set_title(f"view {col - 1}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
