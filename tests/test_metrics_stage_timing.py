"""Threshold crossings and mode strengths."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from suite.metrics.stage_timing import crossing_step, learned_in_order, mode_strengths


@settings(max_examples=50, deadline=None)
@given(st.floats(0.1, 10.0), st.floats(0.05, 0.95))
def test_crossing_of_a_linear_curve_is_exact(slope, frac):
    steps = np.arange(0, 101, 7)
    values = slope * steps
    threshold = frac * values[-1]
    assert crossing_step(steps=steps, values=values, threshold=threshold) == \
        pytest.approx(threshold / slope)
    # The falling direction finds the same crossing of the mirrored curve.
    assert crossing_step(steps=steps, values=-values, threshold=-threshold, rising=False) == \
        pytest.approx(threshold / slope)


def test_crossing_edge_cases():
    steps = np.array([0, 10, 20])
    assert crossing_step(steps=steps, values=np.array([0.0, 0.1, 0.2]), threshold=1.0) == math.inf
    assert crossing_step(steps=steps, values=np.array([2.0, 3.0, 4.0]), threshold=1.0) == 0.0
    assert crossing_step(steps=steps, values=np.array([0.0, np.nan, 4.0]), threshold=1.0) == 20.0
    # The first crossing counts, even if the curve later falls back below.
    assert crossing_step(steps=steps, values=np.array([0.0, 2.0, 0.0]), threshold=1.0) == 5.0


def test_learned_in_order():
    assert learned_in_order(stage_times=np.array([1.0, 2.0, 3.0])) == 1.0
    assert learned_in_order(stage_times=np.array([1.0, 3.0, 2.0])) == 0.0
    assert learned_in_order(stage_times=np.array([1.0, math.inf])) == 0.0


def test_mode_strengths_read_the_diagonal_in_the_teacher_basis():
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(5, 3, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(4, 3, generator=gen, dtype=torch.float64))[0]
    strengths = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    product = u @ torch.diag(strengths) @ v.T
    torch.testing.assert_close(mode_strengths(product=product, left=u, right=v), strengths)
