"""Weighted kNN classifier on l2-normalised features (Wu et al. 2018, InstDisc, Sec. 3.4).

Each query's k nearest bank entries by cosine similarity vote for their labels with weight
``exp(sim / T)``; the class with the largest total weight is the prediction. This is the
monitor SSL papers report during training (k 200, T 0.07).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predicted labels for ``query`` (Q, D) from ``bank`` (B, D) with labels (B,)."""
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} rows but {bank_labels.shape[0]} labels")
    k = min(k, bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    predictions = []
    for start in range(0, query.shape[0], chunk):
        q = F.normalize(query[start : start + chunk].float(), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_top1(
    query, query_labels, bank, bank_labels, num_classes: int, k: int = 200, temperature: float = 0.07
) -> float:
    predicted = knn_predict(query, bank, bank_labels, num_classes, k, temperature)
    return (predicted == query_labels).float().mean().item()


def k_for_bank(k: int, bank_labels) -> int:
    """``k``, or the bank's smallest class size where that is less: with more neighbours than a
    class has members, a query of that class is outvoted by the others whatever the features
    (k 200 against ~144 images per class), so the figure would measure the bank, not the encoder."""
    labels = np.asarray(bank_labels)
    labels = labels[labels >= 0]
    if not len(labels):
        return k
    return int(min(k, np.bincount(labels)[np.unique(labels)].min()))
