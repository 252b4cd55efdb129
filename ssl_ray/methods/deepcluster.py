"""DeepCluster (Caron et al. 2018, "Deep Clustering for Unsupervised Learning of Visual Features",
https://arxiv.org/abs/1807.05520): alternately cluster the encoder's features of the whole
training set with k-means, and train the encoder to predict each image's cluster (Eq. 2-3):

    min_C  sum_n min_{y_n} || f(x_n) - C y_n ||^2          (k-means, every epoch)
    min_theta,W  (1/N) sum_n  CE(W f_theta(x_n), y_n)       (the pseudo-labels as classes)

Per re-clustering (Sec. 3.3): PCA to 256 dimensions with whitening, l2-normalisation, k-means
(``nn.kmeans``: faiss, as the paper's code); images drawn uniformly over the clusters
(``data.balance``); the classifier ``W`` re-initialised, since the new cluster indices mean
nothing to the old one. k: 10,000 for ImageNet's 1,000 classes in the paper (and "some amount
of over-segmentation is beneficial", Fig. 3b); 100 here, for 10-class data.

Deviations: the paper clusters fc7 outputs of an AlexNet under an MLP kept across
re-clusterings; here it clusters the encoder's pooled features and the classifier is linear
on them (the encoder is what is kept). No Sobel filter on the input (the paper's, for colour
images; Fashion-MNIST is grey). k-means is fitted on at most 256 images per centroid (faiss's
default; the paper used every image) and then every image is assigned: see ``nn/kmeans.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_ray.methods.base import SSLMethod
from ssl_ray.methods.params import PerSample
from ssl_ray.methods.registry import register_method
from ssl_ray.nn.kmeans import fit_clustering
from ssl_ray.views.parts import SAMPLE_INDEX, SampleIndex
from ssl_ray.views.recipe import ONE_VIEW, Batch

UNASSIGNED = -1


@register_method("deepcluster")
class DeepCluster(SSLMethod):
    crops = ONE_VIEW
    fits_targets = True
    balanced_over_targets = True
    reset_with_targets = ("classifier",)

    class Params(PerSample):
        num_clusters: int = Field(default=100, gt=1)
        recluster_every: int = Field(default=1, ge=1)  # epochs (the paper: every epoch)
        pca_dim: int = Field(default=256, gt=0)
        kmeans_iterations: int = Field(default=20, gt=0)  # the paper's code: niter 20
        # k-means is fitted on at most this many images per cluster; the rest are assigned.
        points_per_centroid: int = Field(default=256, gt=0)

    @classmethod
    def data_refusal(cls, params, train_size: int) -> str | None:
        if train_size < params.num_clusters:
            return (
                f"method.num_clusters: {params.num_clusters} clusters need at least as many training images, "
                f"and there are {train_size}"
            )
        return None

    @classmethod
    def recipe_parts(cls, params) -> tuple[SampleIndex, ...]:
        return (SampleIndex(),)

    def __init__(self, params, encoder, feature_dim, recipe) -> None:
        super().__init__(params, encoder, feature_dim, recipe)
        if params.num_samples is None:
            raise ValueError("method.num_samples: DeepCluster's pseudo-labels need the training set's size")
        self.classifier = nn.Linear(self.feature_dim, params.num_clusters)
        # Checkpointed with the model: a resume trains on the clusters it left with, and does not
        # re-cluster before they are due.
        self.register_buffer("assignments", torch.full((params.num_samples,), UNASSIGNED, dtype=torch.long))
        self.register_buffer("clustered_at_epoch", torch.tensor(-1, dtype=torch.long))
        self._clustering = None  # the last fit (not state: refitted when due)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        features = self.backbone(batch.views[0])
        targets = self.assignments[batch[SAMPLE_INDEX]]
        loss = F.cross_entropy(self.classifier(features).float(), targets, ignore_index=UNASSIGNED)
        return {"loss": loss, "embedding": features.detach()}

    def targets_due(self, epoch: int) -> bool:
        last = int(self.clustered_at_epoch)
        return last < 0 or (epoch % self.params.recluster_every == 0 and last != epoch)

    def target_sample_size(self) -> int:
        return self.params.points_per_centroid * self.params.num_clusters

    def fit_targets(self, features: torch.Tensor, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
        m = self.params
        self._clustering = fit_clustering(
            features.float().cpu().numpy(),
            m.num_clusters,
            m.pca_dim,
            m.kmeans_iterations,
            seed,
            m.points_per_centroid,
        )

        def assign(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self._clustering.assign(batch.float().cpu().numpy()))

        return assign

    def adopt_targets(self, epoch: int, index: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> dict:
        """Installs the new pseudo-labels and re-initialises the classifier. Returns the NMI
        against the previous assignment (Fig. 2b) and against the true labels where known
        (Fig. 2a), the clusters the fit re-seeded and any left empty, and the largest cluster's
        share of the images (a sign of collapse)."""
        # Imported here: every process that parses a pipeline imports every method (the command
        # line, Ray Train's workers, Ray Data's tasks), and scikit-learn costs each of them 1 s.
        from sklearn.metrics import normalized_mutual_info_score

        index, targets, labels = index.cpu().numpy(), targets.cpu().numpy(), labels.cpu().numpy()
        previous = self.assignments.cpu().numpy()[index]
        self.assignments[torch.from_numpy(index).to(self.assignments.device)] = torch.from_numpy(targets).to(
            self.assignments.device
        )
        self.clustered_at_epoch.fill_(epoch)
        self.classifier.reset_parameters()
        sizes = np.bincount(targets, minlength=self.params.num_clusters)
        metrics = {
            "clusters_reseeded": float(self._clustering.reseeded if self._clustering else 0),
            "clusters_empty": float(np.count_nonzero(sizes == 0)),
            "largest_cluster_share": float(sizes.max() / len(targets)),
        }
        if (previous != UNASSIGNED).all():
            metrics["nmi_previous"] = float(normalized_mutual_info_score(previous, targets))
        known = labels >= 0
        if known.any():
            metrics["nmi_labels"] = float(normalized_mutual_info_score(labels[known], targets[known]))
        return metrics

    def target_classes(self) -> torch.Tensor | None:
        return None if int(self.clustered_at_epoch) < 0 else self.assignments
