"""Linear probe on frozen features: multinomial logistic regression (scikit-learn's L-BFGS),
its L2 strength chosen on a held-out part of the training set, never on the test set.

The protocol of the SSL papers (a linear classifier on the frozen backbone's pooled features,
top-1 on the test set), in the cached-features form the field uses for small datasets: extract
once, then fitting is seconds. Features are standardised with the training split's statistics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

# Weight decays tried (L2 on the weights, per example: C = 1 / (wd * n)).
WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
# Below this many feature entries (n x D) the fits run their BLAS and OpenMP on one thread.
# Small L-BFGS steps spend more on waking threads than on arithmetic, and beside torch's own
# OpenMP pool far more: the probe of 1,000 64-d features took 18.8 s on 2 threads and 0.96 s on
# one (benchmarks/README.md, "Linear probe threads"). Above it (60,000 x 512: 1.47 s vs 1.61 s
# per 30 iterations) more threads pay.
ONE_THREAD_BELOW = 1 << 24


@dataclass
class ProbeResult:
    top1: float
    top5: float
    weight_decay: float
    held_out_top1: dict[float, float] = field(default_factory=dict)  # per weight decay tried
    held_out_indices: np.ndarray | None = None  # rows of the training set used for the choice
    converged: bool = True  # False: L-BFGS stopped at max_iter on the final fit


def held_out_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held_out) of the training set, class-stratified and seeded."""
    indices = np.arange(len(labels))
    fit, held = train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)
    return np.sort(fit), np.sort(held)


def _classifier(weight_decay: float, n: int, max_iter: int) -> LogisticRegression:
    return LogisticRegression(C=1.0 / (weight_decay * n), max_iter=max_iter, tol=1e-4)


def _top_k(probabilities: np.ndarray, classes: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = classes[np.argsort(-probabilities, axis=1)[:, :k]]
    return float((top == labels[:, None]).any(axis=1).mean())


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    seed: int = 0,
    held_out: float = 0.1,
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
    max_iter: int = 1000,  # 300 stopped 9 of 11 5-epoch fits early (benchmarks/README.md)
) -> ProbeResult:
    """Choose the weight decay by held-out top-1 (fit on the rest of the training set), refit
    on the whole training set with it, report top-1/top-5 on the test set."""
    with threadpool_limits(1 if train_x.size < ONE_THREAD_BELOW else None):
        return _probe(train_x, train_y, test_x, test_y, seed, held_out, weight_decays, max_iter)


def _probe(train_x, train_y, test_x, test_y, seed, held_out, weight_decays, max_iter) -> ProbeResult:
    fit, held = held_out_split(train_y, held_out, seed)
    scaler = StandardScaler().fit(train_x[fit])
    fit_x, held_x = scaler.transform(train_x[fit]), scaler.transform(train_x[held])
    scores = {}
    with warnings.catch_warnings():
        # The search's fits only rank the weight decays; the final fit's convergence is reported.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for wd in weight_decays:
            model = _classifier(wd, len(fit), max_iter).fit(fit_x, train_y[fit])
            scores[wd] = float((model.predict(held_x) == train_y[held]).mean())
    best = max(weight_decays, key=lambda wd: (scores[wd], wd))  # ties: the stronger regulariser
    scaler = StandardScaler().fit(train_x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = _classifier(best, len(train_x), max_iter).fit(scaler.transform(train_x), train_y)
    probabilities = model.predict_proba(scaler.transform(test_x))
    return ProbeResult(
        top1=_top_k(probabilities, model.classes_, test_y, 1),
        top5=_top_k(probabilities, model.classes_, test_y, min(5, len(model.classes_))),
        weight_decay=best,
        held_out_top1=scores,
        held_out_indices=held,
        converged=not any(issubclass(w.category, ConvergenceWarning) for w in caught),
    )
