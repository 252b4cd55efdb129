"""DeepCluster's clustering step (Caron et al. 2018, "Deep Clustering for Unsupervised Learning
of Visual Features", https://arxiv.org/abs/1807.05520, Sec. 3.2-3.3): features PCA-reduced
and whitened, l2-normalised, then k-means; clusters left empty are re-seeded by splitting a
non-empty one.

The linear algebra is faiss's (``PCAMatrix`` with eigenvalue power -1/2, ``Kmeans``), as in the
paper's own code (facebookresearch/deepcluster, ``clustering.py``): it is the library built for
k-means of millions of vectors, and its wheel installs from PyPI on every platform we run.

Scale: k-means is fitted on a sample of at most ``points_per_centroid * k`` rows (faiss's own
cap, 256 per centroid by default; the paper's code lifted it to use every image), and every
other image is then only assigned to its nearest centroid, batch by batch. So the features of
the whole training set never sit in memory at once: the fit holds the sample, the assignment
one batch, and the result is one integer per image (``train/refit.py`` streams the passes).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

WHITENING_EPSILON = 1e-5


@dataclass
class Clustering:
    """A fitted clustering: the whitening PCA and the centroids in its l2-normalised space."""

    pca: faiss.PCAMatrix
    centroids: np.ndarray  # (k, d) float32
    reseeded: int = 0  # clusters the fit left empty on its sample, re-seeded

    def reduce(self, features: np.ndarray) -> np.ndarray:
        """Raw features (N, D) -> PCA-whitened, l2-normalised (N, d), as the fit saw them."""
        reduced = self.pca.apply(np.ascontiguousarray(features, dtype=np.float32))
        return reduced / np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Each row's nearest centroid (int64), from raw features."""
        return nearest(self.reduce(features), self.centroids)


def nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(points, dtype=np.float32), 1)[1].ravel().astype(np.int64)


def fit_clustering(
    features: np.ndarray, k: int, pca_dim: int, iterations: int = 20, seed: int = 0, points_per_centroid: int = 256
) -> Clustering:
    """PCA to ``pca_dim`` (at most the feature size and the sample's rows) with whitening, then
    k-means with ``k`` centroids on the l2-normalised result (Sec. 3.3 "Implementation details"),
    and any cluster its sample leaves empty re-seeded. Every image of the sample keeps its
    cluster when all the images are assigned (the nearest centroid is the same), so no cluster
    is empty in the whole set's assignment either."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    n, dim = features.shape
    if n < k:
        raise ValueError(f"k-means with {k} clusters needs at least {k} images, got {n}")
    pca = faiss.PCAMatrix(dim, min(pca_dim, dim, n - 1), -0.5)
    # Added to the eigenvalues before their -1/2 power: directions the features do not use
    # (dead ReLU channels, fewer images than dimensions) would otherwise scale by infinity.
    pca.epsilon = WHITENING_EPSILON
    pca.train(features)
    clustering = Clustering(pca, np.empty((0, 0), dtype=np.float32))
    reduced = clustering.reduce(features)
    kmeans = faiss.Kmeans(
        reduced.shape[1], k, niter=iterations, seed=seed, max_points_per_centroid=points_per_centroid, verbose=False
    )
    kmeans.train(reduced)
    labels = nearest(reduced, kmeans.centroids)
    _, clustering.centroids, clustering.reseeded = reseed_empty_clusters(
        reduced, labels, kmeans.centroids, np.random.default_rng(seed)
    )
    return clustering


def reseed_empty_clusters(
    points: np.ndarray, labels: np.ndarray, centroids: np.ndarray, rng: np.random.Generator, scale: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, int]:
    """Sec. 3.3, "Empty clusters": "when a cluster becomes empty, we randomly select a non-empty
    cluster and use its centroid with a small random perturbation as the new centroid for the
    empty cluster. We then reassign the points belonging to the non-empty cluster to the two
    resulting clusters." faiss does this between its iterations; this does it for the sample's
    assignment to the final centroids, which can still leave a cluster empty. ``points`` are
    the reduced features ``labels`` assign. Returns the new labels and centroids, and how many
    clusters were re-seeded."""
    labels, centroids = labels.copy(), centroids.copy()
    reseeded = 0
    for empty in np.flatnonzero(np.bincount(labels, minlength=len(centroids)) == 0):
        sizes = np.bincount(labels, minlength=len(centroids))
        # A cluster of one point cannot be split between two centroids.
        donor = int(rng.choice(np.flatnonzero(sizes > 1)))
        noise = scale * rng.standard_normal(centroids.shape[1]).astype(np.float32)
        centre = centroids[donor].copy()
        centroids[empty], centroids[donor] = centre + noise, centre - noise
        members = np.flatnonzero(labels == donor)
        choice = nearest(points[members], centroids[[donor, empty]])
        if choice.min() == choice.max():  # all on one side: split by the perturbation's direction
            along = (points[members] - centre) @ noise
            choice = (along > np.median(along)).astype(np.int64)
            if choice.min() == choice.max():
                choice[: len(choice) // 2] = 1
        labels[members] = np.where(choice == 1, empty, donor)
        reseeded += 1
    return labels, centroids, reseeded
