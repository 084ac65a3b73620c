"""Linear mode connectivity: barriers, permutation symmetry, weight matching and LLFC."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from suite.metrics.connectivity import (
    barrier,
    interpolate,
    llfc_distance,
    matching_objective,
    mlp_forward,
    params_from_sequential,
    path_curve,
    permute_params,
    state_path_curve,
    weight_matching,
)

ALPHAS = np.linspace(0.0, 1.0, 11)
seeds = st.integers(0, 2**31 - 1)


def random_mlp(widths, gen, dtype=torch.float64):
    """A ReLU MLP with widths [in, h_1, ..., out], weights ~ N(0, 1/fan_in), small biases."""
    return [
        (torch.randn(n_out, n_in, generator=gen, dtype=dtype) / n_in**0.5,
         0.1 * torch.randn(n_out, generator=gen, dtype=dtype))
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
    ]


def random_perms(params, gen):
    return [torch.randperm(len(bias), generator=gen) for _, bias in params[:-1]]


def random_data(n_in, n_classes, gen, n=64, dtype=torch.float64):
    x = torch.randn(n, n_in, generator=gen, dtype=dtype)
    y = torch.randint(0, n_classes, (n,), generator=gen)
    return x, y


def assert_params_equal(params_a, params_b):
    assert len(params_a) == len(params_b)
    for (wa, ba), (wb, bb) in zip(params_a, params_b, strict=True):
        assert torch.equal(wa, wb) and torch.equal(ba, bb)


def barriers(params_a, params_b, x, y):
    curve = path_curve(params_a=params_a, params_b=params_b, alphas=ALPHAS, x=x, y=y)
    return (barrier(values=curve["loss"], alphas=curve["alpha"]),
            barrier(values=curve["error"], alphas=curve["alpha"]))


# Hidden widths 24-48 with 32 inputs: in 3000 seeds weight matching recovered every permuted
# copy. With much narrower layers (8-16 units) coordinate descent sometimes stops in a local
# optimum even for an exact permuted copy, so these tests stay in the reliable range.
architectures = st.tuples(
    st.lists(st.integers(24, 48), min_size=1, max_size=3), st.integers(2, 5), seeds
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=0, max_size=4), st.integers(1, 6), seeds)
def test_permute_params_preserves_the_function(hidden, n_in, seed):
    gen = torch.Generator().manual_seed(seed)
    params = random_mlp([n_in, *hidden, 3], gen)
    perms = random_perms(params, gen)
    permuted = permute_params(params=params, perms=perms)
    x, _ = random_data(n_in, 3, gen, n=16)
    logits, features = mlp_forward(params=params, x=x, return_features=True)
    logits_p, features_p = mlp_forward(params=permuted, x=x, return_features=True)
    # Permuting the next layer's columns reorders a sum: equal up to float64 rounding.
    torch.testing.assert_close(logits_p, logits, rtol=0, atol=1e-12)
    # Each hidden pre-activation is the original one with its units reordered.
    for l, perm in enumerate(perms):
        torch.testing.assert_close(features_p[l], features[l][:, perm], rtol=0, atol=1e-12)
    # The inverse permutations undo it bit for bit (pure indexing).
    inverse = [torch.argsort(p) for p in perms]
    assert_params_equal(permute_params(params=permuted, perms=inverse), params)


def test_permute_params_rejects_bad_perms():
    params = random_mlp([3, 4, 2], torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="one permutation per hidden layer"):
        permute_params(params=params, perms=[])
    with pytest.raises(ValueError, match="not a permutation"):
        permute_params(params=params, perms=[torch.tensor([0, 0, 1, 2])])


@settings(max_examples=25, deadline=None, derandomize=True)
@given(architectures)
def test_weight_matching_recovers_a_permuted_copy(arch):
    hidden, n_classes, seed = arch
    gen = torch.Generator().manual_seed(seed)
    params_a = random_mlp([32, *hidden, n_classes], gen)
    perms = random_perms(params_a, gen)
    params_b = permute_params(params=params_a, perms=perms)
    found = weight_matching(params_a=params_a, params_b=params_b, generator=gen)
    # B's unit i is A's unit perms[i]; matched unit i is B's unit found[i]: composition = id.
    for p, q in zip(perms, found, strict=True):
        assert torch.equal(p[q], torch.arange(len(p)))
    matched = permute_params(params=params_b, perms=found)
    assert_params_equal(matched, params_a)
    x, y = random_data(32, n_classes, gen)
    loss_barrier, error_barrier = barriers(params_a, matched, x, y)
    assert abs(loss_barrier) <= 1e-6 and abs(error_barrier) <= 1e-6


def test_weight_matching_uses_the_biases():
    # Hidden units with identical weights differ only by their biases: the b_A b_Bᵀ term of
    # the cost is the only thing that can tell them apart.
    gen = torch.Generator().manual_seed(2)
    width = 10
    w_in = torch.randn(1, 4, generator=gen, dtype=torch.float64).expand(width, 4).clone()
    w_out = torch.randn(3, 1, generator=gen, dtype=torch.float64).expand(3, width).clone()
    bias = torch.randn(width, generator=gen, dtype=torch.float64)
    params_a = [(w_in, bias), (w_out, torch.zeros(3, dtype=torch.float64))]
    params_b = permute_params(params=params_a, perms=random_perms(params_a, gen))
    found = weight_matching(params_a=params_a, params_b=params_b, generator=gen)
    assert_params_equal(permute_params(params=params_b, perms=found), params_a)


def test_weight_matching_edge_cases_and_generators():
    gen = torch.Generator().manual_seed(1)
    # No hidden layer: nothing to permute.
    logistic = random_mlp([5, 3], gen)
    assert weight_matching(params_a=logistic, params_b=logistic, generator=gen) == []
    params_a, params_b = random_mlp([8, 6, 7, 3], gen), random_mlp([8, 6, 7, 3], gen)
    # A numpy Generator works too, and the global torch RNG is never touched.
    state = torch.get_rng_state()
    perms = weight_matching(params_a=params_a, params_b=params_b,
                            generator=np.random.default_rng(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert [len(p) for p in perms] == [6, 7] and all(p.dtype == torch.long for p in perms)
    # Same seed, same answer.
    again = weight_matching(params_a=params_a, params_b=params_b,
                            generator=np.random.default_rng(0))
    assert all(torch.equal(p, q) for p, q in zip(perms, again, strict=True))
    with pytest.raises(TypeError, match="generator"):
        weight_matching(params_a=params_a, params_b=params_b, generator=0)
    with pytest.raises(ValueError, match="shapes differ"):
        weight_matching(params_a=params_a, params_b=random_mlp([8, 5, 7, 3], gen), generator=gen)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(2, 16), min_size=1, max_size=3), seeds)
def test_weight_matching_never_decreases_the_objective(hidden, seed):
    gen = torch.Generator().manual_seed(seed)
    widths = [6, *hidden, 3]
    params_a, params_b = random_mlp(widths, gen), random_mlp(widths, gen)
    identity = [torch.arange(h) for h in hidden]
    objectives = [matching_objective(params_a=params_a, params_b=params_b, perms=identity)]
    # The same generator seed replays the same layer orders, so max_rounds = k stops the run
    # of max_rounds = k + 1 one round early: the objective must rise (weakly) round by round.
    for rounds in range(1, 6):
        perms = weight_matching(params_a=params_a, params_b=params_b, max_rounds=rounds,
                                generator=torch.Generator().manual_seed(seed))
        objectives.append(matching_objective(params_a=params_a, params_b=params_b, perms=perms))
    assert all(b >= a - 1e-9 for a, b in zip(objectives[:-1], objectives[1:], strict=True))
    # The objective is the correlation Σ⟨θ_A, θ'_B⟩, so it is −½‖θ_A − θ'_B‖² + constant.
    permuted = permute_params(params=params_b, perms=perms)
    dist = sum(float(((wa - wb) ** 2).sum() + ((ba - bb) ** 2).sum())
               for (wa, ba), (wb, bb) in zip(params_a, permuted, strict=True))
    norms = sum(float((w**2).sum() + (b**2).sum()) for w, b in params_a + params_b)
    assert objectives[-1] == pytest.approx((norms - dist) / 2, rel=1e-9, abs=1e-9)


def assert_matching_ignores_the_labelling_of_b(params_a, params_b, x, y, gen):
    """Matching B, or B with its hidden units relabelled at random, gives the same barriers."""
    matched = permute_params(params=params_b, perms=weight_matching(
        params_a=params_a, params_b=params_b, generator=gen))
    relabelled = permute_params(params=params_b, perms=random_perms(params_b, gen))
    matched_again = permute_params(params=relabelled, perms=weight_matching(
        params_a=params_a, params_b=relabelled, generator=gen))
    for first, second in zip(barriers(params_a, matched, x, y),
                             barriers(params_a, matched_again, x, y), strict=True):
        assert first == pytest.approx(second, abs=1e-5)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.integers(4, 24), st.integers(2, 5), seeds)
def test_barrier_after_matching_ignores_the_labelling_of_b_one_hidden_layer(width, n_cls, seed):
    # With one hidden layer the matching is a single global assignment, so relabelling B
    # cannot change the matched network, even for independently initialized endpoints.
    gen = torch.Generator().manual_seed(seed)
    params_a, params_b = random_mlp([7, width, n_cls], gen), random_mlp([7, width, n_cls], gen)
    x, y = random_data(7, n_cls, gen)
    assert_matching_ignores_the_labelling_of_b(params_a, params_b, x, y, gen)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(architectures)
def test_barrier_after_matching_ignores_the_labelling_of_b_deep(arch):
    # Deeper nets: B is a noisy permuted copy of A (like two runs from a shared early
    # checkpoint), where coordinate descent reaches the same optimum from any labelling.
    hidden, n_classes, seed = arch
    gen = torch.Generator().manual_seed(seed)
    params_a = random_mlp([32, *hidden, n_classes], gen)
    params_b = [(w + 0.3 * torch.randn(w.shape, generator=gen, dtype=w.dtype) / w.shape[1]**0.5,
                 b) for w, b in permute_params(params=params_a, perms=random_perms(params_a, gen))]
    x, y = random_data(32, n_classes, gen)
    assert_matching_ignores_the_labelling_of_b(params_a, params_b, x, y, gen)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=20), seeds)
def test_barrier_matches_numpy(inner, seed):
    rng = np.random.default_rng(seed)
    alphas = rng.permutation(np.concatenate([[0.0, 1.0], rng.uniform(0, 1, len(inner))]))
    values = rng.normal(size=len(alphas))
    v0, v1 = values[alphas == 0.0][0], values[alphas == 1.0][0]
    expected = max(v - ((1 - a) * v0 + a * v1) for a, v in zip(alphas, values, strict=True))
    assert barrier(values=values, alphas=alphas) == pytest.approx(expected, abs=1e-12)
    assert barrier(values=torch.tensor(values), alphas=list(alphas)) == \
        pytest.approx(expected, abs=1e-12)
    assert barrier(values=values, alphas=alphas) >= 0.0


@settings(max_examples=50, deadline=None)
@given(st.floats(-5, 5), st.floats(-5, 5), st.floats(0.01, 3), st.floats(0.05, 0.95))
def test_barrier_of_lines_and_bumps(v0, v1, height, peak):
    alphas = np.unique(np.concatenate([np.linspace(0, 1, 21), [peak]]))
    line = (1 - alphas) * v0 + alphas * v1
    assert barrier(values=line, alphas=alphas) == pytest.approx(0.0, abs=1e-12)
    # A triangular bump on top of the line peaks at `peak` (a grid point) with `height`.
    bump = height * np.minimum(alphas / peak, (1 - alphas) / (1 - peak))
    assert barrier(values=line + bump, alphas=alphas) == pytest.approx(height, rel=1e-12)
    # A dip below the chord is no barrier.
    assert barrier(values=line - bump, alphas=alphas) == pytest.approx(0.0, abs=1e-12)


def test_barrier_validates_the_grid():
    with pytest.raises(ValueError, match="endpoints"):
        barrier(values=[1.0, 2.0, 3.0], alphas=[0.0, 0.5, 0.9])
    with pytest.raises(ValueError, match="endpoints"):
        barrier(values=[1.0, 2.0, 3.0], alphas=[0.1, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        barrier(values=[1.0, 2.0, 3.0], alphas=[0.0, 1.0, 1.5])
    with pytest.raises(ValueError, match="equal length"):
        barrier(values=[1.0, 2.0], alphas=[0.0, 0.5, 1.0])
    assert np.isnan(barrier(values=[1.0, np.nan, 2.0], alphas=[0.0, 0.5, 1.0]))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(2, 6), st.floats(0.1, 10.0), seeds)
def test_logistic_regression_has_no_loss_barrier(n_in, n_classes, scale, seed):
    # Cross-entropy is convex in (W, b) of a linear model, so the loss along any straight
    # path stays under the chord: the barrier is 0 up to rounding.
    gen = torch.Generator().manual_seed(seed)
    params_a = [(scale * torch.randn(n_classes, n_in, generator=gen, dtype=torch.float64),
                 scale * torch.randn(n_classes, generator=gen, dtype=torch.float64))]
    params_b = [(scale * torch.randn(n_classes, n_in, generator=gen, dtype=torch.float64),
                 scale * torch.randn(n_classes, generator=gen, dtype=torch.float64))]
    x, y = random_data(n_in, n_classes, gen)
    curve = path_curve(params_a=params_a, params_b=params_b, alphas=np.linspace(0, 1, 41),
                       x=x, y=y)
    assert barrier(values=curve["loss"], alphas=curve["alpha"]) <= 1e-9


def test_path_curve_endpoints_and_batching():
    gen = torch.Generator().manual_seed(3)
    params_a, params_b = random_mlp([5, 9, 4], gen), random_mlp([5, 9, 4], gen)
    x, y = random_data(5, 4, gen, n=50)
    curve = path_curve(params_a=params_a, params_b=params_b, alphas=ALPHAS, x=x, y=y)
    for params, k in ((params_a, 0), (params_b, -1)):
        logits = mlp_forward(params=params, x=x)
        assert curve["loss"][k] == pytest.approx(
            float(nn.functional.cross_entropy(logits, y)), rel=1e-12)
        assert curve["error"][k] == pytest.approx(float((logits.argmax(1) != y).double().mean()))
    batched = path_curve(params_a=params_a, params_b=params_b, alphas=ALPHAS, x=x, y=y,
                         batch_size=16)
    np.testing.assert_allclose(batched["loss"], curve["loss"], rtol=1e-12)
    np.testing.assert_array_equal(batched["error"], curve["error"])


def sequential(params):
    """The nn.Sequential [Linear, ReLU, ..., Linear] holding `params`."""
    layers = []
    for weight, bias in params:
        linear = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype, device="meta")
        layers += [linear.to_empty(device="cpu"), nn.ReLU()]
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
    return nn.Sequential(*layers[:-1])


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(2, 9), min_size=1, max_size=3), seeds)
def test_state_path_curve_equals_the_mlp_path_curve(hidden, seed):
    """The any-architecture path (interpolating a state dict by name through the model's own
    forward) against the MLP path on the same networks: equal to float64 rounding."""
    gen = torch.Generator().manual_seed(seed)
    widths = [4, *hidden, 3]
    params_a, params_b = random_mlp(widths, gen), random_mlp(widths, gen)
    x, y = random_data(4, 3, gen, n=40)
    model = sequential(params_a)
    state_b = sequential(params_b).state_dict()
    generic = state_path_curve(model=model, state_a=model.state_dict(), state_b=state_b,
                               alphas=ALPHAS, x=x, y=y)
    mlp = path_curve(params_a=params_a, params_b=params_b, alphas=ALPHAS, x=x, y=y)
    np.testing.assert_allclose(generic["loss"], mlp["loss"], rtol=1e-12)
    np.testing.assert_array_equal(generic["error"], mlp["error"])


def numpy_distance(u, v):
    u, v = np.asarray(u, dtype=np.float64).ravel(), np.asarray(v, dtype=np.float64).ravel()
    return 1.0 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(2, 12), min_size=1, max_size=3), st.floats(0.0, 1.0), seeds)
def test_llfc_first_layer_is_exact_and_matches_numpy(hidden, alpha, seed):
    gen = torch.Generator().manual_seed(seed)
    widths = [6, *hidden, 3]
    params_a, params_b = random_mlp(widths, gen, torch.float32), random_mlp(widths, gen,
                                                                            torch.float32)
    x, _ = random_data(6, 3, gen, n=32, dtype=torch.float32)
    interp = interpolate(params_a=params_a, params_b=params_b, alpha=alpha)
    _, feats_i = mlp_forward(params=interp, x=x, return_features=True)
    _, feats_a = mlp_forward(params=params_a, x=x, return_features=True)
    _, feats_b = mlp_forward(params=params_b, x=x, return_features=True)
    for l, (fi, fa, fb) in enumerate(zip(feats_i, feats_a, feats_b, strict=True)):
        dist = llfc_distance(features_interp=fi, features_a=fa, features_b=fb, alpha=alpha)
        if l == 0:  # pre-activations x Wᵀ + b are linear in (W, b)
            assert dist["cosine"] <= 1e-6 and dist["cosine_per_sample"] <= 1e-6
        assert all(value >= 0.0 for value in dist.values())
        fi64, fa64, fb64 = fi.double().numpy(), fa.double().numpy(), fb.double().numpy()
        lin = (1 - alpha) * fa64 + alpha * fb64
        assert dist["cosine"] == pytest.approx(numpy_distance(fi64, lin), abs=1e-9)
        per_sample = np.mean([numpy_distance(u, v) for u, v in zip(fi64, lin, strict=True)])
        assert dist["cosine_per_sample"] == pytest.approx(per_sample, abs=1e-9)
        assert dist["baseline"] == pytest.approx(numpy_distance(fa64, fb64), abs=1e-9)


def test_llfc_zero_vectors_and_known_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    # At α = 1/2 the interpolation is ½(a + b); F_α is exactly that on row 0, zero on row 1
    # (both zero: distance 0) and non-zero on row 2 (against zero: distance 1).
    f_alpha = torch.tensor([[0.5, 0.5], [0.0, 0.0], [3.0, 0.0]])
    dist = llfc_distance(features_interp=f_alpha, features_a=a, features_b=b, alpha=0.5)
    assert dist["cosine_per_sample"] == pytest.approx((0.0 + 0.0 + 1.0) / 3)
    assert dist["baseline"] == pytest.approx(1.0)  # orthogonal endpoints
    assert dist["baseline_per_sample"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    zeros = torch.zeros(4, 3)
    all_zero = llfc_distance(features_interp=zeros, features_a=zeros, features_b=zeros, alpha=0.3)
    assert all(value == 0.0 for value in all_zero.values())
    with pytest.raises(ValueError, match="shapes differ"):
        llfc_distance(features_interp=zeros, features_a=zeros[:2], features_b=zeros, alpha=0.3)


def test_params_from_sequential_matches_the_module():
    # Built on the meta device and filled from a generator: module init would use the global RNG.
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(),
                          nn.Linear(5, 3)).to(device="meta").to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    params = params_from_sequential(model=model)
    assert [tuple(w.shape) for w, _ in params] == [(7, 12), (5, 7), (3, 5)]
    x = torch.randn(10, 3, 4, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(mlp_forward(params=params, x=x), model(x))
    with pytest.raises(ValueError, match="no bias"):
        params_from_sequential(model=nn.Sequential(nn.Linear(3, 2, bias=False)))
    with pytest.raises(ValueError, match="expected nn.ReLU"):
        params_from_sequential(model=nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="end with"):
        params_from_sequential(model=nn.Sequential(nn.Linear(3, 4), nn.ReLU()))


class ScaledReadout(nn.Linear):
    """Like muP's MuReadout: an nn.Linear whose forward scales its output."""

    def forward(self, x):
        return super().forward(x) / 4.0


class Renamed(nn.Linear):
    """An nn.Linear subclass computing nn.Linear's own forward."""


def test_only_layers_computing_the_plain_forward_are_the_reference_layout():
    """muP's MuReadout subclasses nn.Linear: taken for the reference layout, its paths were
    computed by a plain F.linear without its output scaling, so even α = 0 was not the network
    (test loss 1.53 against its own 1.44, found by a user)."""
    def mlp(last=nn.Linear, first=nn.Linear):
        torch.manual_seed(0)
        return nn.Sequential(first(4, 8), nn.ReLU(), last(8, 3))

    assert len(params_from_sequential(model=mlp(last=Renamed))) == 2  # same function: accepted
    for model in (mlp(last=ScaledReadout),
                  nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 8)), nn.ReLU(),
                                nn.Linear(8, 3))):
        with pytest.raises(ValueError, match="computing its own forward"):
            params_from_sequential(model=model)
    hooked = mlp()
    hooked[2].register_forward_hook(lambda module, args, out: 2 * out)
    with pytest.raises(ValueError, match="computing its own forward"):
        params_from_sequential(model=hooked)

    class Doubled(nn.Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(ValueError, match="with its own forward or hooks"):
        params_from_sequential(model=Doubled(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
