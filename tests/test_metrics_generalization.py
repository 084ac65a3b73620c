"""Tests for suite.metrics.generalization: Lampinen & Ganguli theory and curve summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from suite.metrics.generalization import (
    detection_threshold,
    early_stopping,
    first_step_reaching,
    gap_summary,
    generalization_error,
    grokking_delay,
    noise_bulk_edge,
    noisy_singular_value,
    optimal_test_error_rank_one,
    singular_vector_overlap,
)

# ----------------------------------------------------------------------------------------------
# Monte-Carlo check of the theory on one large noise draw.

N1, N3 = 2000, 1000  # N1 examples (columns of Y), N3 outputs (rows)
ASPECT = N3 / N1  # A = 0.5: threshold A^{1/4} ≈ 0.841, bulk edge 1 + √A ≈ 1.707


def _top_triplet(matrix: np.ndarray, rng: np.random.Generator):
    """Leading singular triplet (u, s, v) by ARPACK, with an explicit start vector."""
    v0 = rng.standard_normal(min(matrix.shape))
    u, s, vt = scipy.sparse.linalg.svds(matrix, k=1, v0=v0)
    return u[:, 0], float(s[0]), vt[0]


@pytest.fixture(scope="module")
def noisy_setup():
    rng = np.random.default_rng(20180927)
    # Z_ij ~ N(0, 1/N1): variance 1/(number of examples). This is the scaling whose spectrum
    # ends at 1 + √A; see test_noise_normalization for the check against the alternative.
    noise = rng.standard_normal((N3, N1)) / math.sqrt(N1)
    u = rng.standard_normal(N3)
    u /= np.linalg.norm(u)
    v = rng.standard_normal(N1)
    v /= np.linalg.norm(v)
    return noise, u, v, rng


def test_noise_normalization(noisy_setup):
    noise, _, _, rng = noisy_setup
    _, top, _ = _top_triplet(noise, rng)
    # N(0, 1/N1) reproduces the paper's bulk edge 1 + √A (≈ 1.70 measured vs 1.707).
    assert top == pytest.approx(noise_bulk_edge(aspect=ASPECT), rel=0.02)
    # REFERENCES.md's N(0, 1/N3) is the same matrix scaled by √(N1/N3); its edge is
    # (1 + √A)/√A ≈ 2.414, not 1 + √A, so it does not reproduce the formulas in A.
    top_n3 = top * math.sqrt(N1 / N3)
    assert top_n3 == pytest.approx((1 + math.sqrt(ASPECT)) / math.sqrt(ASPECT), rel=0.02)
    assert top_n3 > 1.3 * noise_bulk_edge(aspect=ASPECT)


@pytest.mark.parametrize("signal", [1.5, 2.0, 3.0])
def test_monte_carlo_above_threshold(noisy_setup, signal):
    noise, u, v, rng = noisy_setup
    assert signal > detection_threshold(aspect=ASPECT)
    teacher = signal * np.outer(u, v)
    u_hat, s_hat, v_hat = _top_triplet(teacher + noise, rng)
    assert s_hat == pytest.approx(noisy_singular_value(signal=signal, aspect=ASPECT), rel=0.03)
    overlap = abs(u_hat @ u) * abs(v_hat @ v)
    # Finite-size fluctuations of the overlap are ≈ 0.01 at these sizes (12 seeds: sd ≈ 0.009
    # at s̄ = 1.5, smaller above); this draw is −0.023 at s̄ = 1.5, so allow 0.04.
    assert overlap == pytest.approx(singular_vector_overlap(signal=signal, aspect=ASPECT),
                                    abs=0.04)
    # The best rescaling c = ⟨ûv̂ᵀ, Ȳ⟩_F of the data's top mode gives E_g = 1 − O² exactly
    # (empirical O), the paper's estimate of the optimal early-stopped error.
    mode = np.outer(u_hat, v_hat)
    best = np.sum(mode * teacher) * mode
    error = generalization_error(product=best, teacher=teacher)
    assert error == pytest.approx(1.0 - overlap**2, rel=1e-9)
    assert error == pytest.approx(optimal_test_error_rank_one(signal=signal, aspect=ASPECT),
                                  abs=0.06)


@pytest.mark.parametrize("signal", [0.0, 0.5])
def test_monte_carlo_below_threshold(noisy_setup, signal):
    noise, u, v, rng = noisy_setup
    assert signal < detection_threshold(aspect=ASPECT)
    u_hat, s_hat, v_hat = _top_triplet(signal * np.outer(u, v) + noise, rng)
    edge = noise_bulk_edge(aspect=ASPECT)
    assert noisy_singular_value(signal=signal, aspect=ASPECT) == edge
    assert s_hat == pytest.approx(edge, rel=0.03)
    assert abs(u_hat @ u) * abs(v_hat @ v) < 0.05  # the top vectors miss the teacher
    assert singular_vector_overlap(signal=signal, aspect=ASPECT) == 0.0
    assert optimal_test_error_rank_one(signal=signal, aspect=ASPECT) == 1.0


def test_monte_carlo_wide_output_aspect_above_one():
    # The formulas are symmetric in the sense that they also hold for A > 1 (N3 > N1).
    rng = np.random.default_rng(7)
    n1, n3, signal = 600, 1200, 3.0
    aspect = n3 / n1
    u = rng.standard_normal(n3)
    u /= np.linalg.norm(u)
    v = rng.standard_normal(n1)
    v /= np.linalg.norm(v)
    data = signal * np.outer(u, v) + rng.standard_normal((n3, n1)) / math.sqrt(n1)
    u_hat, s_hat, v_hat = _top_triplet(data, rng)
    assert s_hat == pytest.approx(noisy_singular_value(signal=signal, aspect=aspect), rel=0.03)
    assert abs(u_hat @ u) * abs(v_hat @ v) == pytest.approx(
        singular_vector_overlap(signal=signal, aspect=aspect), abs=0.04)


# ----------------------------------------------------------------------------------------------
# Properties of the closed forms.

aspects = st.floats(min_value=1e-3, max_value=1e3)


def test_closed_form_values():
    assert detection_threshold(aspect=16.0) == pytest.approx(2.0)
    assert noise_bulk_edge(aspect=4.0) == pytest.approx(3.0)
    # A = 1, s̄ = 2: ŝ = √(5·5)/2 = 2.5; O = √(1 − 5/20)·√(1 − 5/20) = 0.75.
    assert noisy_singular_value(signal=2.0, aspect=1.0) == pytest.approx(2.5)
    assert singular_vector_overlap(signal=2.0, aspect=1.0) == pytest.approx(0.75)
    assert optimal_test_error_rank_one(signal=2.0, aspect=1.0) == pytest.approx(1 - 0.75**2)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_invalid_aspect(bad):
    with pytest.raises(ValueError):
        noise_bulk_edge(aspect=bad)
    with pytest.raises(ValueError):
        noisy_singular_value(signal=1.0, aspect=bad)


def test_invalid_signal():
    with pytest.raises(ValueError):
        singular_vector_overlap(signal=-1.0, aspect=1.0)


@settings(max_examples=200, deadline=None)
@given(aspect=aspects, factor=st.floats(min_value=1.0 + 1e-6, max_value=1e3))
def test_shat_exceeds_signal_and_edge(aspect, factor):
    signal = factor * detection_threshold(aspect=aspect)
    s_hat = noisy_singular_value(signal=signal, aspect=aspect)
    assert s_hat > signal  # noise inflates a detected mode: ŝ² − s̄² = 1 + A + A/s̄²
    assert s_hat >= noise_bulk_edge(aspect=aspect) * (1 - 1e-12)  # outlier above the bulk


@settings(max_examples=200, deadline=None)
@given(aspect=aspects)
def test_values_at_threshold(aspect):
    threshold = detection_threshold(aspect=aspect)
    edge = noise_bulk_edge(aspect=aspect)
    # ŝ is continuous at the threshold: the outlier emerges from the bulk edge.
    assert noisy_singular_value(signal=threshold, aspect=aspect) == edge
    just_above = threshold * (1 + 1e-9)
    assert noisy_singular_value(signal=just_above, aspect=aspect) == pytest.approx(edge,
                                                                                   rel=1e-6)
    # O = 0 at the threshold and rises continuously from 0 just above it.
    assert singular_vector_overlap(signal=threshold, aspect=aspect) == 0.0
    assert singular_vector_overlap(signal=just_above, aspect=aspect) < 1e-3


@settings(max_examples=200, deadline=None)
@given(aspect=aspects, signal=st.floats(min_value=1.0, max_value=1e6))
def test_shat_tends_to_signal_as_signal_grows(aspect, signal):
    signal = max(signal, 1.01 * detection_threshold(aspect=aspect))
    ratio = noisy_singular_value(signal=signal, aspect=aspect) / signal
    # ŝ/s̄ = √((1 + 1/s̄²)(1 + A/s̄²)) ≤ 1 + (1 + A)/(2 s̄²) by AM-GM, so ŝ/s̄ → 1.
    assert 1.0 < ratio <= 1.0 + (1.0 + aspect) / (2 * signal**2) + 1e-12


@settings(max_examples=200, deadline=None)
@given(signal=st.floats(min_value=0.05, max_value=100.0), aspect=st.floats(1e-12, 1e-2))
def test_shat_small_aspect_limit(signal, aspect):
    # As A → 0 (many examples per output) ŝ → √(1 + s̄²), not s̄: with Z_ij ~ N(0, 1/N1) every
    # output row keeps unit noise power. ŝ = √(1 + s̄²)·√(1 + A/s̄²).
    if signal <= detection_threshold(aspect=aspect):
        return
    limit = math.sqrt(1 + signal**2)
    s_hat = noisy_singular_value(signal=signal, aspect=aspect)
    assert limit * (1 - 1e-12) <= s_hat <= limit * (1 + aspect / (2 * signal**2) + 1e-12)


def test_shat_small_aspect_limit_sequence():
    values = [noisy_singular_value(signal=2.0, aspect=a) for a in (1e-1, 1e-3, 1e-6, 1e-9)]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(math.sqrt(5.0), rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(aspect=aspects, signal=st.floats(min_value=1.0, max_value=1e6))
def test_overlap_tends_to_one(aspect, signal):
    signal = max(signal, 1.01 * detection_threshold(aspect=aspect))
    overlap = singular_vector_overlap(signal=signal, aspect=aspect)
    # For s̄ ≥ 1: 1 − O ≤ 1 − O² ≤ (1 + 3A)/s̄², so O → 1 as s̄ → ∞.
    assert 0.0 < overlap <= 1.0
    assert 1.0 - overlap <= (1.0 + 3.0 * aspect) / signal**2 + 1e-12
    assert optimal_test_error_rank_one(signal=signal, aspect=aspect) == pytest.approx(
        1.0 - overlap**2)


@settings(max_examples=200, deadline=None)
@given(aspect=aspects, lo=st.floats(1.0 + 1e-3, 50.0), hi=st.floats(1.0 + 1e-3, 50.0))
def test_overlap_and_shat_increase_with_signal(aspect, lo, hi):
    lo, hi = sorted((lo, hi))
    threshold = detection_threshold(aspect=aspect)
    o_lo, o_hi = (singular_vector_overlap(signal=f * threshold, aspect=aspect) for f in (lo, hi))
    s_lo, s_hi = (noisy_singular_value(signal=f * threshold, aspect=aspect) for f in (lo, hi))
    assert o_lo <= o_hi + 1e-12
    assert s_lo <= s_hi + 1e-12


# ----------------------------------------------------------------------------------------------
# generalization_error


def _random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 8), cols=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_generalization_error_matches_numpy_and_torch(rows, cols, seed):
    rng = np.random.default_rng(seed)
    product = rng.standard_normal((rows, cols))
    teacher = rng.standard_normal((rows, cols))
    direct = np.linalg.norm(product - teacher) ** 2 / np.linalg.norm(teacher) ** 2
    assert generalization_error(product=product, teacher=teacher) == pytest.approx(direct)
    as_torch = generalization_error(product=torch.from_numpy(product),
                                    teacher=torch.from_numpy(teacher))
    assert as_torch == pytest.approx(direct)
    assert isinstance(as_torch, float)


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 8), cols=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_generalization_error_rotation_invariant(rows, cols, seed):
    rng = np.random.default_rng(seed)
    product = rng.standard_normal((rows, cols))
    teacher = rng.standard_normal((rows, cols))
    left, right = _random_orthogonal(rows, rng), _random_orthogonal(cols, rng)
    before = generalization_error(product=product, teacher=teacher)
    after = generalization_error(product=left @ product @ right, teacher=left @ teacher @ right)
    assert after == pytest.approx(before, rel=1e-9)


def test_generalization_error_reference_points():
    teacher = torch.diag(torch.tensor([3.0, 1.0]))
    assert generalization_error(product=torch.zeros(2, 2), teacher=teacher) == 1.0
    assert generalization_error(product=teacher.clone(), teacher=teacher) == 0.0
    assert generalization_error(product=2 * teacher, teacher=teacher) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        generalization_error(product=np.ones((2, 2)), teacher=np.zeros((2, 2)))
    with pytest.raises(ValueError):
        generalization_error(product=np.ones((2, 3)), teacher=np.ones((3, 2)))


# ----------------------------------------------------------------------------------------------
# Curve summaries

STEPS = np.array([0, 10, 20, 30, 40, 50])


def test_early_stopping_minimum_and_first_tie():
    error = np.array([1.0, 0.6, 0.3, 0.3, 0.5, 0.8])
    assert early_stopping(steps=STEPS, test_error=error) == (0.3, 20.0)
    # Torch input, minimum at the last step.
    decreasing = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], dtype=torch.float64)
    assert early_stopping(steps=torch.from_numpy(STEPS), test_error=decreasing) == (0.5, 50.0)


def test_early_stopping_skips_nan():
    error = np.array([1.0, np.nan, 0.4, np.nan, 0.9, 0.4])
    assert early_stopping(steps=STEPS, test_error=error) == (0.4, 20.0)
    assert early_stopping(steps=STEPS, test_error=np.full(6, np.nan)) == (math.inf, math.inf)


def test_gap_summary():
    train = np.array([1.0, 0.5, 0.2, 0.1, 0.0, 0.0])
    test = np.array([1.0, 0.6, 0.5, 0.6, 0.7, 0.4])
    gaps = gap_summary(train=train, test=test)
    assert gaps["final_gap"] == pytest.approx(0.4)
    assert gaps["max_gap"] == pytest.approx(0.7)
    with pytest.raises(ValueError):
        gap_summary(train=train, test=test[:-1])


def test_first_step_reaching():
    values = np.array([0.1, 0.5, 0.99, 0.98, 1.0, 1.0])
    assert first_step_reaching(steps=STEPS, values=values, threshold=0.99) == 20.0  # ≥, not >
    assert first_step_reaching(steps=STEPS, values=values, threshold=0.0) == 0.0
    assert first_step_reaching(steps=STEPS, values=values, threshold=1.01) == math.inf
    with_nan = np.array([np.nan, np.nan, 0.2, 1.0, 1.0, 1.0])
    assert first_step_reaching(steps=STEPS, values=with_nan, threshold=0.5) == 30.0


@pytest.mark.parametrize("bad_steps", [[0, 10, 10, 30, 40, 50], [50, 40, 30, 20, 10, 0],
                                       [0, 10, 20]])
def test_steps_validated(bad_steps):
    with pytest.raises(ValueError):
        first_step_reaching(steps=np.array(bad_steps), values=np.ones(6), threshold=0.5)


def test_grokking_delay():
    train = np.array([0.2, 0.8, 1.0, 1.0, 1.0, 1.0])
    test = np.array([0.1, 0.2, 0.3, 0.6, 0.995, 1.0])
    result = grokking_delay(steps=STEPS, train_acc=train, test_acc=test)
    assert result == {"steps_to_train": 20.0, "steps_to_test": 40.0, "delay": 20.0}
    # A lower threshold is reached earlier by both.
    low = grokking_delay(steps=STEPS, train_acc=train, test_acc=test, threshold=0.5)
    assert low == {"steps_to_train": 10.0, "steps_to_test": 30.0, "delay": 20.0}


def test_grokking_delay_never_generalizes():
    train = np.array([0.2, 0.8, 1.0, 1.0, 1.0, 1.0])
    test = np.array([0.1, 0.2, 0.3, 0.3, 0.3, 0.3])
    result = grokking_delay(steps=STEPS, train_acc=train, test_acc=test)
    assert result == {"steps_to_train": 20.0, "steps_to_test": math.inf, "delay": math.inf}


def test_grokking_delay_never_fits():
    never = np.full(6, 0.5)
    result = grokking_delay(steps=STEPS, train_acc=never, test_acc=never)
    # inf − inf would be NaN; the delay is +inf (a failure) instead.
    assert result == {"steps_to_train": math.inf, "steps_to_test": math.inf, "delay": math.inf}
    test_only = grokking_delay(steps=STEPS, train_acc=never, test_acc=np.ones(6))
    assert test_only["steps_to_train"] == math.inf
    assert test_only["delay"] == math.inf
