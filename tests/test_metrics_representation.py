"""Representation metrics against scipy and their invariances."""

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from suite.metrics.representation import complement_energy, effective_rank, subspace_distance

dims = st.tuples(st.integers(4, 12), st.integers(1, 3), st.integers(0, 3), st.integers(0, 10**6))


def random_case(d, k, extra, seed):
    """A truth (d, k) and a learned matrix (d, k + extra) in float64."""
    gen = torch.Generator().manual_seed(seed)
    k_prime = min(k + extra, d)
    truth = torch.randn(d, k, generator=gen, dtype=torch.float64)
    learned = torch.randn(d, k_prime, generator=gen, dtype=torch.float64)
    return truth, learned, gen


def orthogonal(n, gen):
    return torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]


@settings(max_examples=40, deadline=None)
@given(dims)
def test_subspace_distance_matches_scipy(case):
    truth, learned, _ = random_case(*case)
    k = truth.shape[1]
    top = torch.linalg.svd(learned, full_matrices=False)[0][:, :k].numpy()
    angles = scipy.linalg.subspace_angles(top, truth.numpy())
    expected = np.sin(np.max(angles))
    assert subspace_distance(learned=learned, truth=truth) == pytest.approx(expected, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(dims)
def test_subspace_distance_invariances(case):
    truth, learned, gen = random_case(*case)
    base = subspace_distance(learned=learned, truth=truth)
    k_prime = learned.shape[1]
    rotation = orthogonal(k_prime, gen)  # mixes B's columns: same left singular subspace
    perm = torch.randperm(k_prime, generator=gen)
    assert subspace_distance(learned=learned @ rotation, truth=truth) == pytest.approx(base, abs=1e-9)
    assert subspace_distance(learned=learned[:, perm], truth=truth) == pytest.approx(base, abs=1e-9)
    assert subspace_distance(learned=3.7 * learned, truth=truth) == pytest.approx(base, abs=1e-9)
    # Rotating the whole space moves both subspaces together.
    q = orthogonal(truth.shape[0], gen)
    assert subspace_distance(learned=q @ learned, truth=q @ truth) == pytest.approx(base, abs=1e-9)
    # Any basis of the truth's span gives the same answer.
    mix = torch.randn(truth.shape[1], truth.shape[1], generator=gen, dtype=torch.float64)
    assert subspace_distance(learned=learned, truth=truth @ (mix + 5 * torch.eye(len(mix)))) == \
        pytest.approx(base, abs=1e-8)


@settings(max_examples=30, deadline=None)
@given(dims, st.lists(st.floats(0.2, 5.0), min_size=6, max_size=6))
def test_recovered_span_is_column_scaling_invariant(case, scales):
    """A B of rank k inside span(B*) is at distance 0, whatever its column scales."""
    truth, _, gen = random_case(*case)
    k = truth.shape[1]
    learned = truth @ torch.randn(k, k + 2, generator=gen, dtype=torch.float64)
    scaled = learned * torch.tensor(scales[: k + 2], dtype=torch.float64)
    assert subspace_distance(learned=scaled, truth=truth) == pytest.approx(0.0, abs=1e-7)
    assert complement_energy(learned=scaled, truth=truth) == pytest.approx(0.0, abs=1e-7)


def test_orthogonal_subspace_is_at_distance_one():
    eye = torch.eye(6, dtype=torch.float64)
    assert subspace_distance(learned=eye[:, 3:5], truth=eye[:, :2]) == pytest.approx(1.0)
    assert complement_energy(learned=eye[:, 3:5], truth=eye[:, :2]) == pytest.approx(1.0)


def test_complement_energy_against_numpy():
    gen = np.random.default_rng(0)
    truth, learned = gen.normal(size=(10, 3)), gen.normal(size=(10, 5))
    q = np.linalg.qr(truth)[0]
    expected = np.linalg.norm(learned - q @ q.T @ learned) / np.linalg.norm(learned)
    got = complement_energy(learned=torch.tensor(learned), truth=torch.tensor(truth))
    assert got == pytest.approx(expected, rel=1e-10)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 4), st.floats(0.1, 10.0), st.integers(0, 10**6))
def test_effective_rank_of_equal_singular_values_is_the_rank(rank, pad, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    d = rank + pad + 2
    u = torch.linalg.qr(torch.randn(d, rank, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(rank + pad, rank, generator=gen, dtype=torch.float64))[0]
    matrix = scale * u @ v.T  # (d, rank + pad), `rank` singular values equal to `scale`
    assert effective_rank(matrix=matrix) == pytest.approx(rank, rel=1e-9)


def test_effective_rank_against_entropy_formula():
    sigma = np.array([3.0, 1.0, 0.5, 0.1])
    p = sigma / sigma.sum()
    expected = np.exp(-(p * np.log(p)).sum())
    matrix = torch.tensor(np.diag(sigma))
    assert effective_rank(matrix=matrix) == pytest.approx(expected, rel=1e-12)
    assert 1.0 <= effective_rank(matrix=matrix) <= 4.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_representation_of_rank_below_k_is_at_distance_one(dtype):
    """Its top-k subspace is not defined: a zero B scored 0 (perfect recovery) against an
    axis-aligned truth, through the SVD's arbitrary basis; a rank-1 B inside a 2-D truth
    spans only part of it."""
    eye = torch.eye(6, dtype=dtype)
    truth = eye[:, :2]
    assert subspace_distance(learned=torch.zeros(6, 4, dtype=dtype), truth=truth) == 1.0
    assert subspace_distance(learned=eye[:, :1] @ torch.ones(1, 4, dtype=dtype), truth=truth) == 1.0
    # rank k, however unequal its singular values, is still measured
    learned = truth @ torch.tensor([[1.0, 0.0], [0.0, 1e-3]], dtype=dtype)
    assert subspace_distance(learned=learned, truth=truth) == pytest.approx(0.0, abs=1e-6)


def test_metrics_of_a_zero_representation_are_undefined():
    zero, truth = torch.zeros(6, 4, dtype=torch.float64), torch.eye(6, dtype=torch.float64)[:, :2]
    assert np.isnan(complement_energy(learned=zero, truth=truth))
    assert np.isnan(effective_rank(matrix=zero))  # was 1.0
