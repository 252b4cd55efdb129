import math

import numpy as np
import pytest
import torch

from ssl_ray.monitors.knn import knn_predict, knn_top1


def knn_by_hand(query, bank, labels, num_classes, k, t):
    predictions = []
    for q in query:
        sims = [float(np.dot(q, b) / (np.linalg.norm(q) * np.linalg.norm(b))) for b in bank]
        nearest = sorted(range(len(bank)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in nearest:
            votes[labels[i]] += math.exp(sims[i] / t)
        predictions.append(int(np.argmax(votes)))
    return predictions


@pytest.mark.parametrize("k, t", [(1, 0.07), (5, 0.07), (20, 0.5), (200, 0.07)])
def test_knn_matches_hand_computation(k, t):
    generator = np.random.default_rng(k)
    bank = generator.normal(size=(60, 8)).astype(np.float32)
    labels = generator.integers(0, 4, size=60)
    query = generator.normal(size=(25, 8)).astype(np.float32)
    got = knn_predict(torch.from_numpy(query), torch.from_numpy(bank), torch.from_numpy(labels), 4, k, t, chunk=7)
    assert got.tolist() == knn_by_hand(query, bank, labels, 4, min(k, 60), t)


def test_weighted_vote_beats_majority():
    # Two far 'b' neighbours outvoted by one very close 'a' neighbour at a low temperature.
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_predict(query, bank, labels, 2, k=3, temperature=0.07).item() == 0
    assert knn_top1(query, torch.tensor([0]), bank, labels, 2, k=3) == 1.0


def test_mismatched_bank_rejected():
    with pytest.raises(ValueError, match="labels"):
        knn_predict(torch.zeros(1, 2), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), 2)
