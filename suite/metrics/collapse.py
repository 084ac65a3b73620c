"""Neural-collapse metrics: NC1 variability and fine-label recovery by clustering features."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.optimize import linear_sum_assignment


def nc1(*, features: np.ndarray, labels: np.ndarray) -> float:
    """NC1 = tr(Σ_W Σ_B⁺)/C (Papyan, Han & Donoho 2020).

    features: (N, p); labels: (N,) in 0 … C−1, every class present. Σ_W is the mean over
    samples of (h_i − μ_{c(i)})(h_i − μ_{c(i)})ᵀ, Σ_B the mean over classes of
    (μ_c − μ_G)(μ_c − μ_G)ᵀ with μ_G the mean of the class means, ⁺ the pseudo-inverse.
    (Papyan et al.'s μ_G is the mean of the samples: the two agree on balanced classes, which is
    what the tasks have; the mean of the class means weighs every class alike otherwise.)

    Undefined (NaN) when the class means coincide (Σ_B is zero up to rounding: one class, or
    features all alike, as dead ReLUs give): there is no between-class spread to measure the
    within-class spread against, and the pseudo-inverse of 0 would report perfect collapse, 0.
    """
    h = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([h[labels == c].mean(axis=0) for c in classes])  # (C, p)
    centred = h - means[np.searchsorted(classes, labels)]  # (N, p)
    sigma_w = centred.T @ centred / len(h)
    between = means - means.mean(axis=0)
    sigma_b = between.T @ between / len(classes)
    if not np.trace(sigma_b) > 1e-12 * (np.trace(sigma_w) + np.trace(sigma_b)):
        return math.nan
    # Σ_B has rank ≤ C − 1: the relative cut-off drops its numerically-zero directions.
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10, hermitian=True)) / len(classes))


def matched_accuracy(*, clusters: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of points whose cluster maps to their label under the best one-to-one map
    (Hungarian algorithm on the cluster × label contingency table)."""
    _, c = np.unique(clusters, return_inverse=True)
    _, y = np.unique(labels, return_inverse=True)
    table = np.zeros((max(c.max(), y.max()) + 1,) * 2)
    np.add.at(table, (c, y), 1.0)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(labels))


def kmeans_labels(*, points: np.ndarray, k: int, rng: np.random.Generator, restarts: int) -> np.ndarray:
    """k-means cluster of each point, the best (least distortion) of `restarts` seeded runs.

    Points all equal (fully collapsed) form one cluster: k-means has nothing to split.
    """
    x = np.asarray(points, dtype=np.float64)
    if np.ptp(x, axis=0).max() <= 1e-12 * max(1.0, np.abs(x).max()):
        return np.zeros(len(x), dtype=np.int64)
    best, best_cost = None, np.inf
    for _ in range(restarts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty cluster in one restart is not an error
            centroids, assigned = kmeans2(x, k, minit="++", seed=rng)
        cost = ((x - centroids[assigned]) ** 2).sum()
        if cost < best_cost:
            best, best_cost = assigned, cost
    return best


def recovery_accuracy(*, features: np.ndarray, coarse: np.ndarray, fine: np.ndarray,
                      rng: np.random.Generator, restarts: int = 4) -> float:
    """Fine-label recovery: cluster each coarse class's features into its number of fine
    classes with k-means, match clusters to fine labels one-to-one, and return the fraction
    of all points matched correctly (chance is the largest fine share of each coarse class)."""
    correct = 0.0
    for c in np.unique(coarse):
        inside = coarse == c
        k = len(np.unique(fine[inside]))
        clusters = kmeans_labels(points=features[inside], k=k, rng=rng, restarts=restarts)
        correct += matched_accuracy(clusters=clusters, labels=fine[inside]) * inside.sum()
    return float(correct / len(coarse))
