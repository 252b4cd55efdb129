"""A discrete tokenizer of image patches for BEiT's targets: a k-means codebook over the raw
pixels of patches of the training images; a patch's token is its nearest code.

BEiT (Bao et al. 2022, Sec. 2.2) uses DALL-E's dVAE, which cannot be downloaded here, and a
dVAE or VQ-VAE of our own would be a second network to train and tune before BEiT could start.
k-means over pixel patches is the discrete visual vocabulary with no training of its own
(iGPT's k-means colour palette, Chen et al. 2020, Sec. 3, taken from pixels to patches): it is
fitted in seconds by faiss (as DeepCluster's clustering), the codes of a fixed input are
exact nearest-code lookups, and like the dVAE's tokens they name what a patch looks like,
so predicting them asks for the patch's content and not its exact pixels. Raw pixels, not
normalised per patch: a flat black and a flat white patch are different tokens.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch


def fit_codebook(patches: torch.Tensor, codes: int, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """k-means of ``patches`` (M, P) into ``codes`` centroids (codes, P), float32."""
    points = np.ascontiguousarray(patches.float().cpu().numpy())
    if len(points) < codes:
        raise ValueError(f"a codebook of {codes} codes needs at least as many patches, got {len(points)}")
    kmeans = faiss.Kmeans(points.shape[1], codes, niter=iterations, seed=seed, verbose=False)
    kmeans.train(points)
    return torch.from_numpy(kmeans.centroids.copy())


def tokenize(patches: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Each patch's nearest code, (...,) int64, of ``patches`` (..., P) against ``codebook``
    (K, P), by squared distance computed in fp32 (ties to the lowest index)."""
    flat = patches.reshape(-1, patches.shape[-1]).float()
    book = codebook.float()
    distances = flat.square().sum(1, keepdim=True) - 2 * flat @ book.T + book.square().sum(1)
    return distances.argmin(dim=1).view(patches.shape[:-1])
