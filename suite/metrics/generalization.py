"""Generalization metrics: Lampinen & Ganguli (2018) noisy-teacher theory and curve summaries."""

# Theory conventions (Lampinen & Ganguli 2018, arXiv 1809.10374):
# one-hot inputs, so the N₁ training examples are the columns of the N₃ × N₁ target matrix
# Y = Ȳ + Z, with a low-rank teacher Ȳ = Σ s̄_α u_α v_αᵀ and A = N₃/N₁. The formulas below are
# the σ = 1 case, and they hold for noise entries Z_ij ~ N(0, σ²/N₁): variance 1/(number of
# examples). With that scaling the spectrum of Z alone ends at 1 + √A, for A above or below 1
# (checked by Monte Carlo in tests/test_metrics_generalization.py: N₁ = 2000, N₃ = 1000 gives a
# top singular value ≈ 1.70 against 1 + √A = 1.707). REFERENCES.md writes σ²/N₃ instead; with
# N₃ < N₁ that scaling puts the edge at (1 + √A)/√A (≈ 2.39 measured, 2.414 predicted, for the
# same sizes) and the formulas would no longer hold in A, so this module follows the scaling
# that reproduces the paper's formulas. For general σ apply them to s̄/σ and multiply
# singular values by σ.

from __future__ import annotations

import math

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _check_aspect(aspect: float) -> float:
    aspect = float(aspect)
    if not (math.isfinite(aspect) and aspect > 0.0):
        raise ValueError(f"aspect A = N3/N1 must be finite and > 0, got {aspect}")
    return aspect


def _check_signal(signal: float) -> float:
    signal = float(signal)
    if not (math.isfinite(signal) and signal >= 0.0):
        raise ValueError(f"signal s̄ must be finite and ≥ 0, got {signal}")
    return signal


def detection_threshold(*, aspect: float) -> float:
    """Smallest teacher singular value s̄ visible above the noise: A^{1/4} (σ = 1).

    Lampinen & Ganguli 2018, eq. for ŝ(s̄): a teacher mode with s̄ ≤ A^{1/4} leaves no outlier
    in the training data's spectrum (the BBP-type phase transition of a rank-one
    perturbation of a rectangular noise matrix, Benaych-Georges & Nadakuditi 2012).
    """
    return _check_aspect(aspect) ** 0.25


def noise_bulk_edge(*, aspect: float) -> float:
    """Top of the singular-value spectrum of pure noise Z: 1 + √A (σ = 1, Z_ij ~ N(0, 1/N₁)).

    Lampinen & Ganguli 2018: the Marchenko-Pastur bulk of the noise singular values ends at
    1 + √A; modes below the detection threshold are lost inside it.
    """
    return 1.0 + math.sqrt(_check_aspect(aspect))


def noisy_singular_value(*, signal: float, aspect: float) -> float:
    """Singular value ŝ with which a teacher mode s̄ appears in the noisy data Y = Ȳ + Z.

    Lampinen & Ganguli 2018: ŝ = √((1 + s̄²)(A + s̄²)) / s̄ for s̄ > A^{1/4} (σ = 1).
    Below the threshold the mode makes no outlier and the data's top singular value sits at
    the noise bulk edge, so this returns 1 + √A there. The choice is continuous: the formula
    equals 1 + √A exactly at s̄ = A^{1/4} and grows with s̄ above it.

    Note ŝ > s̄ always (ŝ² − s̄² = 1 + A + A/s̄²): the noise inflates every detected mode, and
    ŝ → s̄ only as s̄ → ∞ (signal-to-noise ratio → ∞). At fixed s̄, A → 0 gives √(1 + s̄²),
    not s̄, because each output row still carries unit noise power.
    """
    signal = _check_signal(signal)
    aspect = _check_aspect(aspect)
    if signal <= detection_threshold(aspect=aspect):
        return noise_bulk_edge(aspect=aspect)
    s2 = signal * signal
    return math.sqrt((1.0 + s2) * (aspect + s2)) / signal


def singular_vector_overlap(*, signal: float, aspect: float) -> float:
    """Overlap O = |ûᵀu|·|v̂ᵀv| of the data's top singular vectors with the teacher's (σ = 1).

    Lampinen & Ganguli 2018:
    O = √(1 − A(1+s̄²)/(s̄²(A+s̄²))) · √(1 − (A+s̄²)/(s̄²(1+s̄²))) above the threshold A^{1/4},
    and 0 at or below it (the data's top vectors are then uncorrelated with the teacher's).
    The first factor is the output-side (N₃-dimensional, ûᵀu) overlap, the second the
    input-side (N₁-dimensional, v̂ᵀv) overlap; both vanish at s̄ = A^{1/4}.
    """
    signal = _check_signal(signal)
    aspect = _check_aspect(aspect)
    if signal <= detection_threshold(aspect=aspect):
        return 0.0
    s2 = signal * signal
    # Clamp at 0: just above the threshold each factor is 0 up to rounding and could dip below.
    out_side = max(0.0, 1.0 - aspect * (1.0 + s2) / (s2 * (aspect + s2)))
    in_side = max(0.0, 1.0 - (aspect + s2) / (s2 * (1.0 + s2)))
    return math.sqrt(out_side) * math.sqrt(in_side)


def optimal_test_error_rank_one(*, signal: float, aspect: float) -> float:
    """Best (early-stopped) generalization error for a rank-one teacher: ≈ 1 − O².

    Lampinen & Ganguli 2018 approximate the optimal early-stopping test error by 1 − O²:
    the student learns the data's top mode û v̂ᵀ first, and the best rescaling c of it gives
    min_c ‖c ûv̂ᵀ − s̄uvᵀ‖²_F / s̄² = 1 − O². It is the paper's approximation, not an exact
    value: at a finite stopping time the student has also partly fitted noise modes. Below the
    threshold O = 0 and the value is 1 (nothing better than the zero map).
    """
    overlap = singular_vector_overlap(signal=signal, aspect=aspect)
    return 1.0 - overlap * overlap


def generalization_error(*, product: ArrayLike, teacher: ArrayLike) -> float:
    """Normalized test error E_g = ‖W − Ȳ‖²_F / ‖Ȳ‖²_F (Lampinen & Ganguli 2018).

    product: the network's end-to-end map W = W₂W₁ (N₃, N₁); teacher: Ȳ with the same shape.
    With one-hot (identity) inputs this is the squared error on fresh, noise-free targets
    relative to the zero predictor, so 1 means "no better than predicting 0". Accepts numpy
    arrays or torch tensors (not mixed) and computes in float64.
    """
    if isinstance(product, torch.Tensor) or isinstance(teacher, torch.Tensor):
        w = torch.as_tensor(product).detach().to(torch.float64)
        y = torch.as_tensor(teacher).detach().to(torch.float64)
        if w.shape != y.shape:
            raise ValueError(f"product {tuple(w.shape)} and teacher {tuple(y.shape)} differ")
        denominator = float(torch.sum(y * y))
        numerator = float(torch.sum((w - y) ** 2))
    else:
        w = np.asarray(product, dtype=np.float64)
        y = np.asarray(teacher, dtype=np.float64)
        if w.shape != y.shape:
            raise ValueError(f"product {w.shape} and teacher {y.shape} differ")
        denominator = float(np.sum(y * y))
        numerator = float(np.sum((w - y) ** 2))
    if denominator == 0.0:
        raise ValueError("teacher has zero norm: the normalized error is undefined")
    return numerator / denominator


# ---------------------------------------------------------------------------------------------
# Curve summaries. Curves are 1-D arrays aligned with `steps` (increasing evaluation steps).
# Convention shared with stage_timing.crossing_step: "never happened" is +inf, never 0, so a
# scorer that ranks by steps counts it as a failure rather than as an instant success.


def _as_curve(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    curve = np.asarray(values, dtype=np.float64)
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {curve.shape}")
    return curve


def _as_steps(steps: ArrayLike, n: int) -> np.ndarray:
    steps = _as_curve(steps, "steps")
    if steps.size != n:
        raise ValueError(f"steps has {steps.size} entries but the curve has {n}")
    if not np.all(np.isfinite(steps)) or np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be finite and strictly increasing")
    return steps


def early_stopping(*, steps: ArrayLike, test_error: ArrayLike) -> tuple[float, float]:
    """(minimum test error, step of the minimum): the oracle early-stopping point.

    Lampinen & Ganguli 2018 compare the optimal early-stopped test error with its value at
    convergence. Ties go to the first occurrence (the earliest step achieving the minimum,
    the natural stopping point). NaN evaluations (a diverged run) are skipped; if all are NaN
    the result is (inf, inf).
    """
    error = _as_curve(test_error, "test_error")
    steps = _as_steps(steps, error.size)
    valid = ~np.isnan(error)
    if not np.any(valid):
        return math.inf, math.inf
    # argmin returns the first index of the minimum, which implements the tie rule.
    masked = np.where(valid, error, np.inf)
    i = int(np.argmin(masked))
    return float(error[i]), float(steps[i])


def gap_summary(*, train: ArrayLike, test: ArrayLike) -> dict[str, float]:
    """Generalization gap test − train: its final value and its maximum over the curve.

    final_gap is the gap at the last evaluation; max_gap the largest gap at any evaluation
    (NaN evaluations skipped; NaN if there are none). For errors/losses a positive gap means
    overfitting (Lampinen & Ganguli 2018 track train and test error together); for accuracies
    pass the curves so that larger is worse, or read the sign accordingly.
    """
    train_curve = _as_curve(train, "train")
    test_curve = _as_curve(test, "test")
    if train_curve.size != test_curve.size:
        raise ValueError(f"train ({train_curve.size}) and test ({test_curve.size}) differ")
    gap = test_curve - train_curve
    finite_gap = gap[~np.isnan(gap)]
    max_gap = float(np.max(finite_gap)) if finite_gap.size else math.nan
    return {"final_gap": float(gap[-1]), "max_gap": max_gap}


def first_step_reaching(*, steps: ArrayLike, values: ArrayLike, threshold: float) -> float:
    """First evaluation step at which values ≥ threshold; math.inf if it is never reached.

    No interpolation between evaluations (unlike stage_timing.crossing_step): the answer is
    an evaluation step, the earliest one at which the criterion was observed. "Not reached" is
    +inf, never 0, so a scorer counts it as a failure. NaN values never count as reaching.
    """
    curve = _as_curve(values, "values")
    steps = _as_steps(steps, curve.size)
    hit = np.flatnonzero(curve >= threshold)  # NaN compares False, so it never counts
    return float(steps[hit[0]]) if hit.size else math.inf


def grokking_delay(
    *,
    steps: ArrayLike,
    train_acc: ArrayLike,
    test_acc: ArrayLike,
    threshold: float = 0.99,
) -> dict[str, float]:
    """Steps until train and test accuracy reach `threshold`, and the delay between them.

    Grokking (Power et al. 2022): training accuracy saturates early and test accuracy much
    later; the delay steps_to_test − steps_to_train measures it. Each time is the first
    evaluation step reaching the threshold (first_step_reaching), +inf when never reached.
    The delay is +inf whenever either time is inf (never inf − inf = NaN): a run that never
    generalizes, or never fits, has no finite delay. A negative delay means test accuracy got
    there first.
    """
    to_train = first_step_reaching(steps=steps, values=train_acc, threshold=threshold)
    to_test = first_step_reaching(steps=steps, values=test_acc, threshold=threshold)
    delay = to_test - to_train if math.isfinite(to_train) and math.isfinite(to_test) else math.inf
    return {"steps_to_train": to_train, "steps_to_test": to_test, "delay": delay}
