"""DeepCluster's parts against what they claim: k-means recovers well-separated blobs, an
empty cluster is re-seeded by splitting another (the paper's rule), the data pipeline's draws
are uniform over the pseudo-classes, and the method adopts its targets (classifier reset,
NMI logged, checkpointed) the same way on every rank."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
from cli import joined_to_the_shared_head
from gloo import run_on_two_workers
from steps import fit_targets
from test_methods import small_config

from ssl_ray.data.balance import ClassBalance, balanced, draws, uniform_over_classes
from ssl_ray.data.sources import from_arrays
from ssl_ray.nn.kmeans import fit_clustering, nearest, reseed_empty_clusters
from ssl_ray.train.build import build_method


def blobs(per_blob=200, k=5, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 10
    labels = np.repeat(np.arange(k), per_blob)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """One-to-one between the two labelings (cluster indices are arbitrary)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_well_separated_blobs_through_pca_whitening():
    features, truth = blobs()
    clustering = fit_clustering(features, k=5, pca_dim=8, seed=1)
    assert clustering.centroids.shape == (5, 8) and clustering.reseeded == 0
    assert same_partition(clustering.assign(features), truth)
    reduced = clustering.reduce(features)
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, rtol=1e-5)  # l2-normalised


def test_an_empty_cluster_is_reseeded_by_splitting_a_non_empty_one():
    points = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [5.0, 0.0], [5.0, 1.0]], dtype=np.float32)
    labels = np.array([0, 0, 0, 0, 1, 1])
    centroids = np.array([[0.0, 1.5], [5.0, 0.5], [50.0, 50.0]], dtype=np.float32)  # cluster 2 empty
    new_labels, new_centroids, reseeded = reseed_empty_clusters(points, labels, centroids, np.random.default_rng(0))
    assert reseeded == 1
    assert np.bincount(new_labels, minlength=3).min() >= 1  # nobody is empty any more
    (donor,) = {int(lab) for lab in labels[new_labels == 2]}  # the new cluster's points came from one cluster
    moved = np.flatnonzero(labels == donor)
    assert set(new_labels[moved]) == {donor, 2}  # split between the donor and the new centroid
    # The two centroids straddle the donor's old one by a small perturbation.
    np.testing.assert_allclose((new_centroids[donor] + new_centroids[2]) / 2, centroids[donor], atol=1e-6)
    assert 0 < np.abs(new_centroids[2] - centroids[donor]).max() < 0.01
    pair = nearest(points[moved], new_centroids[[donor, 2]])
    np.testing.assert_array_equal(new_labels[moved], np.where(pair == 1, 2, donor))  # each to its nearer one
    np.testing.assert_array_equal(new_labels[labels != donor], labels[labels != donor])  # the rest stay


def test_uniform_weights_give_every_class_the_same_expected_draws():
    classes = np.array([0] * 90 + [1] * 9 + [2] * 1 + [-1] * 5)
    weights = uniform_over_classes(classes)
    assert weights[classes == -1].sum() == 0  # never assigned: never drawn
    per_class = [weights[classes == c].sum() for c in range(3)]
    np.testing.assert_allclose(per_class, [100 / 3] * 3, rtol=1e-6)  # N/k each, N = the 100 assigned
    counts = np.stack([draws(weights, np.random.default_rng(s)) for s in range(2000)]).mean(axis=0)
    np.testing.assert_allclose([counts[classes == c].sum() for c in range(3)], per_class, rtol=0.03)


@pytest.fixture(scope="module")
def local_ray():
    with joined_to_the_shared_head():
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield


def test_the_pipeline_draws_every_pseudo_class_about_equally(local_ray):
    """Through Ray Data: 4,096 images in two pseudo-classes of 3,584 and 512; with the weights
    published, an epoch holds about as many images of each, and a new epoch reads new weights."""
    n = 4096
    images = np.zeros((n, 4, 4), dtype=np.uint8)
    classes = np.where(np.arange(n) < 3584, 0, 1)
    balance = ClassBalance.remote()
    stream = balanced(from_arrays(images, classes, numbered=True), balance, n)
    assert stream.count() == n  # no weights yet: every image once
    ray.get(balance.publish.remote(uniform_over_classes(classes)))
    drawn = np.concatenate([b["label"] for b in stream.iter_batches(batch_size=None, batch_format="numpy")])
    assert n <= len(drawn) < 1.15 * n  # the epoch's length, with its margin
    share = np.bincount(drawn, minlength=2) / len(drawn)
    assert abs(share[1] - 0.5) < 0.03, share  # 12.5% of the images, half the draws


def test_more_clusters_than_training_images_is_refused_before_any_worker_starts(fashion_mnist_dir, local_ray):
    """Counted once the data are known (a folder's count is what decodes), named by its field."""
    from ssl_ray.config import ConfigError, config_from_dict
    from ssl_ray.data.sources import build_pretrain_data
    from ssl_ray.train.trainer import _sized_by_the_data

    raw = {"method": {"name": "deepcluster", "num_clusters": 100}, "augment": {"global_crops": 1}}
    for subset, refused in ((64, True), (100, False)):
        config = config_from_dict({**raw, "data": {"path": str(fashion_mnist_dir), "train_subset": subset}})
        data = build_pretrain_data(config, whole_training_set=True)
        if not refused:
            assert _sized_by_the_data(config, data).method.num_samples == 100
            continue
        with pytest.raises(ConfigError, match=r"^method\.num_clusters: 100 clusters need .* and there are 64$"):
            _sized_by_the_data(config, data)


def test_deepcluster_adopts_its_clusters_resets_its_classifier_and_logs_nmi(tmp_path):
    method = build_method(small_config("deepcluster", tmp_path))
    assert method.targets_due(0) and int(method.clustered_at_epoch) == -1
    before = method.classifier.weight.detach().clone()
    first = fit_targets(method)
    assert (method.assignments >= 0).all() and int(method.clustered_at_epoch) == 0
    assert not torch.equal(method.classifier.weight, before)  # re-initialised
    assert 0.0 <= first["nmi_labels"] <= 1.0 and "nmi_previous" not in first
    assert first["targets_fitted_images"] == 64 and first["clusters_empty"] == 0
    assert not method.targets_due(0) and method.targets_due(1)  # every epoch, once
    second = fit_targets(method, seed=0)
    assert 0.0 <= second["nmi_previous"] <= 1.0
    state = method.state_dict()
    assert {"assignments", "clustered_at_epoch"} <= set(state)  # checkpointed: a resume keeps them
    again = build_method(small_config("deepcluster", tmp_path))
    again.load_state_dict(state)
    assert not again.targets_due(0) and torch.equal(again.target_classes(), method.assignments)


def test_every_rank_adopts_rank_zeros_clusters_and_the_same_classifier():
    """Rank 0 alone embeds and clusters; the other ranks get its table and reset their
    classifier under the same seed, so DDP's replicas stay equal."""
    results = run_on_two_workers(_two_rank_fit_both)
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert (results[0][0] >= 0).all()


def _two_rank_fit_both(rank: int):
    """Both ranks call the fit (the loop does); only rank 0 reads the images."""
    torch.manual_seed(rank)  # different RNG states: the reset must not depend on them
    method = build_method(small_config("deepcluster", "/tmp"))
    fit_targets(method)
    return method.assignments.clone(), method.classifier.weight.detach().clone()
