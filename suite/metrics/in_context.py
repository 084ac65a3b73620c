"""In-context regression metrics: exact reference losses and attention pattern scores (He et al. 2025)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.integrate
import scipy.special
import torch


def trivial_loss(*, dim: int, prior_var: float, noise_var: float) -> float:
    """Squared error of the predictor ŷ = 0: E[y_q²] = d τ² + σ²."""
    return dim * prior_var + noise_var


def wishart_linear_statistic(*, f: Callable[[np.ndarray], np.ndarray], size: int, dof: int) -> float:
    """E[Σ_i f(l_i)] over the eigenvalues l_1..l_m of a real Wishart W_m(dof, I), dof ≥ m ≥ 1.

    Exact up to quadrature: the eigenvalue density ∝ Π φ(l_i) Π_{i<j} |l_i − l_j| with
    φ(l) = l^a e^{−l/2}, a = (dof − m − 1)/2, and de Bruijn's identity turns
    E[Π_i (1 + ε f(l_i))] into Pf(M(ε)) / Pf(M(0)), where M_jk = ∫∫ sign(y − x) φ_j(x) φ_k(y)
    (1 + εf(x))(1 + εf(y)) dx dy for the basis φ_j = x^j φ (any basis of the same span works;
    we use the Gamma(a + j + 1, scale 2) densities, which keeps every number O(1)), with one
    extra row and column M_jm = ∫ φ_j (1 + εf) for odd m. The linear term in ε is the mean:
    d/dε log Pf = ½ tr(M⁻¹ M′). Each entry is a 1-D integral, the inner one a Gamma cdf.
    """
    if not dof >= size >= 1:
        raise ValueError(f"need dof >= size >= 1, got size={size}, dof={dof}")
    # The basis densities overlap more as dof/m grows, and the ill-conditioned M amplifies the
    # quadrature's error. The same computation for a statistic with a closed form must reproduce
    # it to 1e-6, else refuse rather than return a wrong number: f = 1/l, E tr W⁻¹ =
    # m / (dof − m − 1), where that is finite; else (dof ≤ m + 1) f = l, E tr W = m·dof (the
    # 1/l check alone left dof = m, m + 1 unchecked, and there m ≥ 18 was off by up to 50%).
    if dof > size + 1:
        test, want = (lambda x: 1.0 / x), size / (dof - size - 1)
    else:
        test, want = (lambda x: x), size * dof
    try:
        check = _de_bruijn_mean(test, size, dof) / want - 1.0
    except np.linalg.LinAlgError:
        check = math.inf
    if not abs(check) < 1e-6:
        raise ValueError(f"the exact Wishart expectation for size={size}, dof={dof} is beyond "
                         f"float64 quadrature (self-check off by {check:.1e}); use fewer "
                         "dimensions or a shorter context")
    return _de_bruijn_mean(f, size, dof)


def _de_bruijn_mean(f: Callable[[np.ndarray], np.ndarray], size: int, dof: int) -> float:
    """½ tr(M(0)⁻¹ M′(0)) of `wishart_linear_statistic`, without its self-check."""
    shape = (dof - size - 1) / 2 + 1 + np.arange(size)  # Gamma shapes a + j + 1, (m,)
    log_norm = scipy.special.gammaln(shape) + shape * math.log(2.0)

    def integrand(t: float) -> np.ndarray:
        # x = t² removes the x^{−½} singularity at a = −½: dx = 2t dt.
        x = t * t
        pdf = 2.0 * t * np.exp((shape - 1) * math.log(x) - x / 2 - log_norm) if t > 0 else (
            np.where(shape == 0.5, 2.0 / np.exp(log_norm), 0.0))  # (m,)
        outside = 1.0 - 2.0 * scipy.special.gammainc(shape, x / 2)  # 1 − 2F_k(x), (m,)
        fx = f(x) if t > 0 else 0.0
        cols = np.concatenate([np.outer(pdf, outside), pdf[:, None]], axis=1)  # (m, m + 1)
        return np.stack([cols, fx * cols])  # g = 1 and g = f

    # One adaptive integration of every entry; entry (j, k) is ∫ φ_j g (1 − 2F_k), the last
    # column ∫ φ_j g: ∫∫ sign(y − x) φ_j(x) φ_k(y) g(x) dx dy = ∫ φ_j(x) g(x) (1 − 2F_k(x)) dx.
    plain, weighted = scipy.integrate.quad_vec(integrand, 0.0, math.inf, epsabs=1e-13,
                                               epsrel=1e-11, limit=2000)[0]
    odd = size % 2
    m0 = np.zeros((size + odd, size + odd))
    m1 = np.zeros_like(m0)
    m0[:size, :size] = np.triu(plain[:, :size], 1) - np.triu(plain[:, :size], 1).T
    m1[:size, :size] = weighted[:, :size] - weighted[:, :size].T  # the f(y) term is the transpose
    if odd:
        m0[:size, size], m1[:size, size] = 1.0, weighted[:, size]
        m0[size, :size], m1[size, :size] = -1.0, -weighted[:, size]
    return float(0.5 * np.trace(np.linalg.solve(m0, m1)))


def bayes_loss(*, context: int, dim: int, prior_var: float, noise_var: float) -> float:
    """Squared error of the Bayes-optimal predictor at context length n (exact expectation).

    The posterior mean is ridge regression with λ = σ²/τ², and its risk given the context
    inputs X (n, d) is σ² + σ² tr((XᵀX + λI)⁻¹) (expectation over x_q and the noise). The
    expectation over X is a Wishart linear statistic of f(l) = 1/(l + λ); for n < d the d − n
    zero eigenvalues of XᵀX contribute (d − n)/λ and the rest are those of XXᵀ ~ W_n(d, I).
    """
    if noise_var <= 0 or prior_var <= 0:
        raise ValueError("bayes_loss needs noise_var > 0 and prior_var > 0")
    lam = noise_var / prior_var
    if context == 0:
        return trivial_loss(dim=dim, prior_var=prior_var, noise_var=noise_var)
    size, dof = min(context, dim), max(context, dim)
    trace = (dim - size) / lam + wishart_linear_statistic(f=lambda x: 1.0 / (x + lam), size=size, dof=dof)
    return noise_var + noise_var * trace


def gd_step_loss(*, context: int, dim: int, prior_var: float, noise_var: float,
                 step: float | None = None) -> float:
    """Squared error of one gradient step from w = 0, ŷ = γ x_qᵀ Xᵀy / n (closed form).

    With S = XᵀX/n, E‖I − γS‖²_F = d − 2γd + γ² d(n + d + 1)/n (Wishart second moment), so
    the risk is σ² + τ²(d − 2γd + γ² d(n + d + 1)/n) + γ² σ² d/n. step=None takes the best
    γ* = τ² n / (τ²(n + d + 1) + σ²): the best a single linear-attention layer can do with an
    isotropic preconditioner, the predictor softmax heads approximate (He et al. 2025).
    """
    if context < 1:
        raise ValueError(f"gd_step_loss needs context >= 1, got {context}")
    n, d = context, dim
    curvature = prior_var * d * (n + d + 1) / n + noise_var * d / n  # coefficient of γ²
    if step is None:
        step = prior_var * d / curvature
    return noise_var + prior_var * d - 2.0 * step * prior_var * d + step**2 * curvature


def _xx_blocks(kq: torch.Tensor) -> torch.Tensor:
    """The x-to-x blocks (H, d, d) of KQ matrices (H, d+1, d+1): the query's y slot is 0."""
    return kq[:, :-1, :-1].double()


def kq_diagonal(*, kq: torch.Tensor) -> float:
    """Share of the KQ x-blocks' energy on their diagonals: Σ_h ‖diag A_h‖² / Σ_h ‖A_h‖²_F.

    kq: (H, d+1, d+1). 1 for diagonal blocks, ≈ 1/d for random ones.
    """
    blocks = _xx_blocks(kq)
    return float(torch.diagonal(blocks, dim1=1, dim2=2).pow(2).sum() / blocks.pow(2).sum())


def kq_homogeneous(*, kq: torch.Tensor) -> float:
    """Share of the diagonals' energy in their mean: Σ_h d·(tr A_h / d)² / Σ_h ‖diag A_h‖².

    kq: (H, d+1, d+1). 1 when every head's diagonal is constant (A_h ∝ I on the diagonal).
    """
    diag = torch.diagonal(_xx_blocks(kq), dim1=1, dim2=2)  # (H, d)
    return float(diag.shape[1] * diag.mean(dim=1).pow(2).sum() / diag.pow(2).sum())


def ov_last_entry(*, ov: torch.Tensor) -> float:
    """Share of the OV vectors' energy on the label entry: Σ_h v_{h,y}² / Σ_h ‖v_h‖².

    ov: (H, d+1), the last entry reading y_i. 1 when heads output only the labels.
    """
    ov = ov.double()
    return float(ov[:, -1].pow(2).sum() / ov.pow(2).sum())


def ov_zero_sum(*, ov: torch.Tensor) -> float:
    """1 − |Σ_h v_{h,y}| / Σ_h |v_{h,y}|: 1 when the heads' label weights cancel (zero sum).

    ov: (H, d+1). Zero sum removes the softmax's common term Σ_i y_i / n, leaving the
    debiased gradient-descent predictor; one head alone always scores 0.
    """
    label = ov[:, -1].double()
    return float(1.0 - label.sum().abs() / label.abs().sum())
