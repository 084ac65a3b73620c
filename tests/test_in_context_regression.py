"""in-context-regression against the mathematics of in-context linear regression (He et al. 2025)."""

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

from suite.entry import load_entry
from suite.loop import Trainer
from suite.metrics.in_context import (
    bayes_loss,
    gd_step_loss,
    kq_diagonal,
    kq_homogeneous,
    ov_last_entry,
    ov_zero_sum,
    trivial_loss,
    wishart_linear_statistic,
)
from suite.profiles import load
from suite.registry import make_task
from suite.task import ConfigError
from suite.tasks.in_context_regression import (
    NEAR_OPTIMAL,
    AttentionRegressor,
    references,
    sample_prompts,
)

ADAMW = Path(__file__).resolve().parents[1] / "baselines" / "adamw"


def prompts(count, context, dim, noise, seed=0):
    return sample_prompts(count=count, context=context, dim=dim, noise=noise,
                          generator=torch.Generator().manual_seed(seed))


def mean_and_error(values):
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), values.std() / math.sqrt(len(values))


# -- exact references --------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "dof"), [(1, 6), (2, 9), (3, 10), (4, 20), (5, 20), (5, 80)])
def test_wishart_statistic_matches_the_inverse_wishart_mean(size, dof):
    """E tr(W⁻¹) = m / (dof − m − 1), the one closed form the same machinery must reproduce."""
    got = wishart_linear_statistic(f=lambda x: 1.0 / x, size=size, dof=dof)
    assert got == pytest.approx(size / (dof - size - 1), rel=1e-6)


def test_wishart_statistic_refuses_what_float64_cannot_resolve():
    with pytest.raises(ValueError, match="beyond float64"):
        wishart_linear_statistic(f=lambda x: 1.0 / (x + 1.0), size=8, dof=160)


@pytest.mark.parametrize(("size", "dof"), [(18, 19), (19, 19), (20, 21), (30, 30)])
def test_wishart_statistic_refuses_where_the_inverse_mean_is_infinite_and_quadrature_fails(size, dof):
    """dof ≤ size + 1 had no self-check (E tr W⁻¹ is infinite there), and the answer for
    f = 1/(l + λ) was silently wrong: at (30, 30) 0.573 against 0.645 by Monte Carlo."""
    with pytest.raises(ValueError, match="beyond float64"):
        wishart_linear_statistic(f=lambda x: 1.0 / (x + 1.0), size=size, dof=dof)


def test_wishart_statistic_of_one_eigenvalue_is_a_chi_square_integral():
    lam = 0.7
    want = scipy.integrate.quad(lambda x: scipy.stats.chi2(7).pdf(x) / (x + lam), 0, math.inf)[0]
    assert wishart_linear_statistic(f=lambda x: 1.0 / (x + lam), size=1, dof=7) == pytest.approx(want)


@pytest.mark.parametrize(("size", "dof"), [(2, 2), (3, 3), (3, 8), (4, 11), (12, 12), (12, 13)])
def test_wishart_statistic_matches_monte_carlo(size, dof):
    rng = np.random.default_rng(size * 100 + dof)
    x = rng.standard_normal((40000, dof, size))
    eig = np.linalg.eigvalsh(np.einsum("sni,snj->sij", x, x))
    mean, err = mean_and_error((1.0 / (eig + 0.5)).sum(axis=1))
    assert wishart_linear_statistic(f=lambda v: 1.0 / (v + 0.5), size=size, dof=dof) == \
        pytest.approx(mean, abs=4 * err)


@pytest.mark.parametrize("context", [0, 2, 5, 9, 20])
def test_bayes_loss_matches_the_ridge_predictor_on_sampled_prompts(context):
    """The posterior mean (ridge, λ = σ²/τ²) on the task's own prompts: n < d, n = d, n > d."""
    dim, noise = 5, 0.5
    batch = prompts(40000, context, dim, noise, seed=context)
    tokens = batch["tokens"].double()
    x, y, xq = tokens[:, :-1, :-1], tokens[:, :-1, -1], tokens[:, -1, :-1]
    lam = noise**2 * dim
    gram = x.transpose(1, 2) @ x + lam * torch.eye(dim, dtype=torch.float64)  # (B, d, d)
    w_hat = torch.linalg.solve(gram, (x.transpose(1, 2) @ y[..., None]))[..., 0]  # (B, d)
    pred = (xq * w_hat).sum(-1)
    mean, err = mean_and_error(((pred - batch["target"].double()) ** 2).numpy())
    want = bayes_loss(context=context, dim=dim, prior_var=1 / dim, noise_var=noise**2)
    assert want == pytest.approx(mean, abs=4 * err)


def test_bayes_loss_limits_and_order():
    kw = dict(dim=5, prior_var=0.2, noise_var=0.25)
    losses = [bayes_loss(context=n, **kw) for n in (0, 1, 5, 20, 80, 300)]
    assert losses[0] == trivial_loss(dim=5, prior_var=0.2, noise_var=0.25) == pytest.approx(1.25)
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False))  # more context helps
    # n ≫ d: ridge ≈ least squares, σ²(1 + d/(n − d − 1)), up to the prior's O(λ/n²) help.
    assert losses[-1] == pytest.approx(0.25 * (1 + 5 / 294), rel=1e-3)
    assert losses[-1] < 0.25 * (1 + 5 / 294)
    for n in (1, 5, 20, 80):  # Bayes never loses to the best single gradient step
        assert bayes_loss(context=n, **kw) < gd_step_loss(context=n, **kw)


def test_trivial_loss_matches_monte_carlo():
    batch = prompts(100000, 3, 6, 0.3)
    mean, err = mean_and_error(batch["target"].double().pow(2).numpy())
    assert trivial_loss(dim=6, prior_var=1 / 6, noise_var=0.09) == pytest.approx(mean, abs=4 * err)


def test_gd_step_loss_matches_a_linear_attention_head_and_its_step_is_optimal():
    """One linear head with KQ = γI on x and OV = e_y is exactly ŷ = γ x_qᵀ Xᵀy / n."""
    dim, n, noise, gamma = 4, 10, 0.5, 0.6
    kq = torch.zeros(1, dim + 1, dim + 1)
    kq[0, :dim, :dim] = gamma * torch.eye(dim)
    ov = torch.zeros(1, dim + 1)
    ov[0, -1] = 1.0
    model = AttentionRegressor(kq, ov, "linear", n)
    batch = prompts(100000, n, dim, noise)
    with torch.no_grad():
        errors = (model(batch["tokens"]) - batch["target"]).double().pow(2).numpy()
    mean, err = mean_and_error(errors)
    kw = dict(context=n, dim=dim, prior_var=1 / dim, noise_var=noise**2)
    assert gd_step_loss(step=gamma, **kw) == pytest.approx(mean, abs=4 * err)
    best = gd_step_loss(**kw)
    assert all(best < gd_step_loss(step=s, **kw) for s in (0.3, 0.55, 0.65, 0.9))


# -- pattern scores ----------------------------------------------------------------------------

def test_pattern_scores_of_the_mechanism_are_one():
    kq = torch.zeros(2, 4, 4)
    kq[0, :3, :3], kq[1, :3, :3] = 0.5 * torch.eye(3), -0.5 * torch.eye(3)
    kq[:, -1, :] = 7.0  # the y row/column is not part of the x-block
    ov = torch.zeros(2, 4)
    ov[:, -1] = torch.tensor([2.0, -2.0])
    assert kq_diagonal(kq=kq) == pytest.approx(1.0)
    assert kq_homogeneous(kq=kq) == pytest.approx(1.0)
    assert ov_last_entry(ov=ov) == pytest.approx(1.0)
    assert ov_zero_sum(ov=ov) == pytest.approx(1.0)


def test_pattern_scores_equal_their_formulas_on_hand_built_weights():
    a = torch.tensor([[1.0, 2.0], [0.0, 3.0]])  # x-block of head 0
    b = torch.tensor([[-1.0, 0.0], [1.0, 1.0]])  # x-block of head 1
    kq = torch.zeros(2, 3, 3)
    kq[0, :2, :2], kq[1, :2, :2] = a, b
    # diagonal energy (1 + 9) + (1 + 1) = 12 of 14 + 3; homogeneous: 2·(2² + 0²) = 8 of 12.
    assert kq_diagonal(kq=kq) == pytest.approx(12 / 17)
    assert kq_homogeneous(kq=kq) == pytest.approx(8 / 12)
    ov = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, -1.0], [0.0, 0.0, 1.0]])
    assert ov_last_entry(ov=ov) == pytest.approx(11 / 16)
    assert ov_zero_sum(ov=ov) == pytest.approx(1 - 3 / 5)
    assert ov_zero_sum(ov=ov[:1]) == pytest.approx(0.0)  # one head cannot cancel


def test_opposite_softmax_heads_implement_the_debiased_gradient_step():
    """Heads ±ωI with label weights ±c: softmax_i ≈ (1 + s_i − s̄)/n, so the common term Σy_i/n
    cancels and ŷ → 2cω x_qᵀ (Σ_i y_i x_i / n − x̄ ȳ) as ω → 0 (the paper's mechanism)."""
    dim, n = 4, 16
    batch = prompts(2000, n, dim, 0.5)
    tokens = batch["tokens"].double()
    x, y, xq = tokens[:, :-1, :-1], tokens[:, :-1, -1], tokens[:, -1, :-1]
    want = torch.einsum("bd,bnd,bn->b", xq, x, y) / n - (xq * x.mean(1)).sum(-1) * y.mean(1)
    for omega in (1e-2, 1e-3):
        kq = torch.zeros(2, dim + 1, dim + 1, dtype=torch.float64)
        kq[0, :dim, :dim], kq[1, :dim, :dim] = omega * torch.eye(dim), -omega * torch.eye(dim)
        ov = torch.zeros(2, dim + 1, dtype=torch.float64)
        ov[:, -1] = torch.tensor([1.0, -1.0]) / (2 * omega)
        with torch.no_grad():
            got = AttentionRegressor(kq, ov, "softmax", n)(tokens)
        assert float((got - want).abs().max()) < 30 * omega * float(want.abs().max())


# -- the task ----------------------------------------------------------------------------------

def test_the_model_runs_on_any_length_and_has_only_parameters():
    task = make_task("in-context-regression", "smoke", {})
    model = task.make_model(0)
    assert not list(model.buffers())
    for n in (1, 12, 48):
        assert model(prompts(3, n, 4, 0.5)["tokens"]).shape == (3,)
    torch.testing.assert_close(task.make_model(0).kq, model.kq)  # init from the seed alone
    assert not torch.equal(task.make_model(1).kq, model.kq)


@pytest.mark.parametrize(("key", "value"), [("noise", 0.0), ("heads", 0), ("attention", "quadratic"),
                                            ("context", -1), ("steps", 0), ("context", 1000)])
def test_check_config_refuses_nonsense(key, value):
    with pytest.raises(ConfigError, match=key):
        make_task("in-context-regression", "smoke", {key: value}).check_config()


def test_summary_reads_the_thresholds_from_the_exact_references():
    task = make_task("in-context-regression", "smoke", {})
    trivial, bayes = references(12, 4, 0.5)
    plateau = 1.3  # the held-out prompts' own trivial loss, mean y_q²
    data = {"target": torch.full((8,), math.sqrt(plateau))}
    steps = np.array([0, 10, 20, 30])
    loss = np.array([plateau, plateau - 0.1 * (trivial - bayes), 0.9, 0.8])
    excess = np.array([trivial - bayes, 0.5, (NEAR_OPTIMAL - 1) * bayes, 0.01])
    curves = {"loss": loss, "loss_2x": loss, "loss_4x": loss, "excess": excess,
              "excess_2x": excess, "excess_4x": excess + 1,
              **{k: np.full(4, 0.5) for k in ("kq_diagonal", "kq_homogeneous", "ov_last_entry",
                                              "ov_zero_sum")}}
    out = task.summarize(steps, curves, data)
    assert out["plateau_exit_step"] == pytest.approx(10.0)
    assert out["steps_to_near_optimal"] == pytest.approx(20.0)
    assert out["excess_loss"] == pytest.approx(0.01)
    assert out["excess_loss_4x"] == pytest.approx(1.01)
    assert set(out) == set(task.metrics())
    assert set(curves) == set(task.curves())


def test_paired_excess_estimates_the_loss_minus_the_exact_bayes_loss():
    """excess = mean((ŷ − y)² − (ŷ_ridge − y)²) on held-out prompts; its mean is L − L*(n)."""
    task = make_task("in-context-regression", "smoke", {"eval_prompts": 20000})
    data = task.make_data(0)
    with torch.no_grad():
        seen = task.observe(task.make_model(0), data)
    for suffix, n in task.lengths().items():
        trivial, bayes = references(n, 4, 0.5)
        # A model near 0 is the trivial predictor: excess ≈ L₀ − L* up to sampling error.
        assert seen[f"excess{suffix}"] == pytest.approx(trivial - bayes, abs=0.05)
        assert seen[f"loss{suffix}"] == pytest.approx(trivial, abs=0.05)


def train(overrides):
    task = make_task("in-context-regression", "smoke", overrides)
    trainer = Trainer(task, load_entry(ADAMW), load("cpu-2core"))
    traj = task.run(0, trainer)
    return task, traj.data, traj.arrays()[1]


def test_training_leaves_the_trivial_plateau_and_stops_above_the_bayes_loss():
    task, data, curves = train({"steps": 400, "evals": 20})
    # Step 0 (small init, ŷ ≈ 0) sits on the trivial plateau: the held-out prompts' mean y_q²
    # (whose own sampling error around L₀ = 1.25 is test_trivial_loss_matches_monte_carlo's).
    assert curves["loss"][0] == pytest.approx(float(data["target"].pow(2).mean()), rel=0.01)
    assert curves["excess"][0] == pytest.approx(curves["loss"][0] - float(
        (data["ridge"] - data["target"]).pow(2).mean()), rel=1e-4)
    dim, noise = 4, 0.5
    for suffix, m in task.lengths().items():
        final, optimum = curves[f"loss{suffix}"][-1], references(m, dim, noise)[1]
        assert optimum * 0.95 < final < NEAR_OPTIMAL * optimum  # near, never (much) below, optimal
    assert curves["loss_4x"][-1] < curves["loss"][-1]  # softmax: longer prompts help
    assert curves["kq_diagonal"][-1] > 0.9 and curves["ov_zero_sum"][-1] > 0.5
    assert curves["kq_diagonal"][0] < 0.5  # the pattern was learned, not initialised


def test_linear_attention_fails_on_longer_prompts():
    _, _, curves = train({"steps": 400, "evals": 5, "attention": "linear"})
    assert curves["loss"][-1] < NEAR_OPTIMAL * references(12, 4, 0.5)[1]
    assert curves["loss_4x"][-1] > curves["loss"][-1]  # its sum grows with the length
