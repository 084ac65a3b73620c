"""The one interval ldbench shows around a seed mean (CLI and site alike): Student-t, clipped to bounds."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_SEEDS = 3  # fewer finite values: "n < 3: no interval" rather than a meaningless one
# Why the t interval and not the bootstrap: with the 3-10 seeds a leaderboard has, the
# percentile bootstrap is too narrow (it resamples only the values seen; with 5 seeds its 95%
# interval covers the mean ≈ 85% of the time for Gaussian data), while the t interval is exact
# for Gaussian seeds and close for the mildly skewed metrics here; it is also deterministic.
METHOD = f"{CONFIDENCE:.0%} Student-t interval"
NO_INTERVAL = f"n < {MIN_SEEDS}: no interval"


def t_intervals(*, mean: np.ndarray, sd: np.ndarray, n: np.ndarray,
                bounds: tuple[np.ndarray, np.ndarray] | None = None,
                confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Low and high ends of mean ± t_{n−1}·sd/√n per row, clipped to each row's bounds.

    mean, sd (the sample standard deviation, ddof=1), n: (rows,); bounds: (low, high), each
    (rows,). Rows with n < MIN_SEEDS get NaN (no interval).
    """
    mean, sd, n = (np.asarray(a, dtype=np.float64) for a in (mean, sd, n))
    ok = n >= MIN_SEEDS
    quantile = np.full(len(n), np.nan)
    quantile[ok] = stats.t.ppf((1 + confidence) / 2, n[ok] - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = quantile * sd / np.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = np.maximum(low, bounds[0]), np.minimum(high, bounds[1])
    low[~ok], high[~ok] = np.nan, np.nan
    return low, high


def t_interval(values, *, bounds: tuple[float, float] = (-math.inf, math.inf),
               confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of the finite values; low and high are NaN below MIN_SEEDS values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    low, high = t_intervals(mean=np.array([values.mean()]), sd=np.array([sd]),
                            n=np.array([len(values)]),
                            bounds=(np.array([bounds[0]]), np.array([bounds[1]])),
                            confidence=confidence)
    return float(values.mean()), float(low[0]), float(high[0])


def clearly_better(*, high_a, low_b, resolution: float = 0.0):
    """Whether A is clearly better than B, lower being better: A's interval ends below B's by
    more than the metric's resolution (closer intervals are numerical noise apart). The one rule
    of the leaderboard's ranks and of `ldbench compare`'s "better"; orient a metric to maximise
    by negating (A's high end is then −low_a). Works elementwise on arrays (NaN: False)."""
    return high_a + resolution < low_b
