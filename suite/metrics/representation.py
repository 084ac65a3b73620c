"""Representation-recovery metrics: how well a learned matrix spans a ground-truth subspace."""

from __future__ import annotations

import torch


def orthonormal_basis(matrix: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (d, k) of the column span of a full-column-rank (d, k) matrix."""
    return torch.linalg.qr(matrix)[0]


def top_left_subspace(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """(d, k) orthonormal basis of the top-k left singular subspace of `matrix` (d, k′)."""
    return torch.linalg.svd(matrix, full_matrices=False)[0][:, :k]


def subspace_distance(*, learned: torch.Tensor, truth: torch.Tensor) -> float:
    """Sine of the largest principal angle between top-k span(learned) and span(truth).

    learned: (d, k′) with k′ ≥ k; truth: (d, k) of full column rank. Equals
    ‖P_{truth⊥} Q_k‖₂ where Q_k spans the top-k left singular vectors of `learned`
    (Yüksel, Boursier & Flammarion 2023). 0 means the subspace is recovered exactly, 1 means
    some learned direction is orthogonal to the truth.

    When `learned` has numerical rank below k (σ_k ≤ σ_1 · max(d, k′) · eps of its dtype, or
    B = 0), its top-k subspace is not defined: its SVD fills it with arbitrary directions, and a
    zero B scored 0, perfect recovery, against an axis-aligned truth. It spans fewer than k
    directions, so some direction of the truth is orthogonal to it: 1 (‖P_truth − P_learned‖₂
    between subspaces of different dimensions).
    """
    k = truth.shape[1]
    sigma = torch.linalg.svdvals(learned)  # descending
    tolerance = sigma[0] * max(learned.shape) * torch.finfo(learned.dtype).eps
    if len(sigma) < k or not sigma[k - 1] > tolerance:
        return 1.0
    q_learned = top_left_subspace(learned, k)  # (d, k)
    q_truth = orthonormal_basis(truth)  # (d, k)
    residual = q_learned - q_truth @ (q_truth.T @ q_learned)  # component outside span(truth)
    return float(torch.linalg.matrix_norm(residual, ord=2).clamp(max=1.0))


def complement_energy(*, learned: torch.Tensor, truth: torch.Tensor) -> float:
    """‖P_{truth⊥} B‖_F / ‖B‖_F: the fraction of B's norm outside span(truth) (0 is ideal).
    Undefined (NaN) for B = 0."""
    q_truth = orthonormal_basis(truth)
    outside = learned - q_truth @ (q_truth.T @ learned)
    return float(torch.linalg.matrix_norm(outside) / torch.linalg.matrix_norm(learned))


def effective_rank(*, matrix: torch.Tensor) -> float:
    """Entropy effective rank exp(H(σ/Σσ)) of Roy & Vetterli (2007).

    Equals r for a matrix with r equal non-zero singular values, and lies in [1, rank].
    Undefined (NaN) for the zero matrix (no singular value to take shares of; it was 1).
    """
    sigma = torch.linalg.svdvals(matrix.to(torch.float64))
    if not sigma.sum() > 0:
        return float("nan")
    p = sigma / sigma.sum()
    p = p[p > 0]  # 0 log 0 = 0
    return float(torch.exp(-(p * p.log()).sum()))
