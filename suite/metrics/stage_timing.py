"""Stage-timing metrics: mode strengths and the steps at which curves cross thresholds."""

from __future__ import annotations

import math

import numpy as np
import torch


def mode_strengths(*, product: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """u_α = u_αᵀ W v_α for each teacher mode α (Saxe et al. 2013, eq. 6).

    product: (n_out, n_in) end-to-end map W = W_L ⋯ W_1; left: (n_out, r) teacher U;
    right: (n_in, r) teacher V. Returns (r,).
    """
    return torch.einsum("or,oi,ir->r", left, product, right)


def crossing_step(*, steps: np.ndarray, values: np.ndarray, threshold: float,
                  rising: bool = True) -> float:
    """First step at which `values` reaches `threshold`, linearly interpolated between evaluations.

    rising=True looks for values ≥ threshold, rising=False for values ≤ threshold. Returns
    +inf when the threshold is never reached (a failure, never 0), and steps[0] if it is met
    at the first evaluation. Non-finite values never count as reaching it.
    """
    steps = np.asarray(steps, dtype=np.float64)
    signed = np.asarray(values, dtype=np.float64) * (1.0 if rising else -1.0)
    target = threshold * (1.0 if rising else -1.0)
    hit = np.flatnonzero(np.isfinite(signed) & (signed >= target))
    if len(hit) == 0:
        return math.inf
    i = int(hit[0])
    if i == 0 or not np.isfinite(signed[i - 1]):
        return float(steps[i])
    # The curve crosses between evaluations i-1 (below) and i (at or above).
    frac = (target - signed[i - 1]) / (signed[i] - signed[i - 1])
    return float(steps[i - 1] + frac * (steps[i] - steps[i - 1]))


def learned_in_order(*, stage_times: np.ndarray) -> float:
    """1.0 if every stage time is finite and strictly increasing (modes sorted by decreasing s)."""
    times = np.asarray(stage_times, dtype=np.float64)
    return float(bool(np.all(np.isfinite(times)) and np.all(np.diff(times) > 0)))
