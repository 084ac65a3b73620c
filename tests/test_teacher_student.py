"""teacher-student against Lampinen & Ganguli's theory of the noisy teacher and its metrics."""

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse.linalg
import torch

from suite import runner
from suite.entry import load_entry
from suite.loop import Trainer
from suite.metrics.generalization import (
    noise_bulk_edge,
    noisy_singular_value,
    optimal_test_error_rank_one,
    singular_vector_overlap,
)
from suite.profiles import load
from suite.registry import make_task
from suite.tasks.teacher_student import NEAR_OPTIMUM, theory_optimum

REPO_SGD = Path(__file__).resolve().parents[1] / "baselines" / "sgd"
# Sizes where finite-size fluctuations of the spectrum are about 1%: A = N3/N1 = 0.5.
LARGE = {"n_in": 2000, "n_out": 1000}


def top_modes(matrix: np.ndarray, k: int):
    """Leading k singular triplets, largest first (ARPACK with a fixed start vector)."""
    v0 = np.random.default_rng(0).standard_normal(min(matrix.shape))
    u, s, vt = scipy.sparse.linalg.svds(matrix.astype(np.float64), k=k, v0=v0)
    order = np.argsort(s)[::-1]
    return u[:, order], s[order], vt[order]


@pytest.mark.parametrize("snr", [1.5, 3.0])
def test_data_spectrum_matches_theory(snr):
    """The task's own noisy targets carry the teacher mode at ŝ(s̄) with overlap O(s̄)."""
    task = make_task("teacher-student", "smoke", {**LARGE, "snr": [snr]})
    data = task.make_data(0)
    u_hat, s_hat, vt_hat = top_modes(data["targets"].numpy(), k=1)
    teacher_u, _, teacher_vt = top_modes(data["teacher"].numpy(), k=1)
    assert s_hat[0] == pytest.approx(noisy_singular_value(signal=snr, aspect=0.5), rel=0.02)
    overlap = abs(u_hat[:, 0] @ teacher_u[:, 0]) * abs(vt_hat[0] @ teacher_vt[0])
    # Overlap fluctuations at this size are ≈ 0.01 (see test_metrics_generalization).
    assert overlap == pytest.approx(singular_vector_overlap(signal=snr, aspect=0.5), abs=0.04)


def test_mode_below_threshold_hides_in_the_noise_bulk():
    task = make_task("teacher-student", "smoke", {**LARGE, "snr": [0.5]})  # A^{1/4} ≈ 0.84
    _, s_hat, _ = top_modes(task.make_data(0)["targets"].numpy(), k=1)
    assert s_hat[0] == pytest.approx(noise_bulk_edge(aspect=0.5), rel=0.02)


def test_noise_level_only_rescales_the_data():
    """snr is in units of σ: doubling σ doubles teacher and targets, draw for draw."""
    base = make_task("teacher-student", "smoke", {}).make_data(3)
    loud = make_task("teacher-student", "smoke", {"noise": 2.0}).make_data(3)
    for key in ("teacher", "targets", "y"):
        torch.testing.assert_close(loud[key], 2.0 * base[key])
    noise = (base["targets"] - base["teacher"]).numpy()
    # Entries of Z are N(0, σ²/n_in) with σ = 1: total power ≈ n_out (1800 draws: ±3.3%).
    assert np.sum(noise**2) == pytest.approx(base["teacher"].shape[0], rel=0.15)


def test_theory_optimum_reduces_to_rank_one_and_matches_monte_carlo():
    for snr in (1.0, 2.0, 3.0):
        assert theory_optimum(snr=[snr], aspect=0.5) == pytest.approx(
            optimal_test_error_rank_one(signal=snr, aspect=0.5))
    # Rank two: the best rescaling of the data's top two modes (their projections on Ȳ, exact
    # because the modes are Frobenius-orthonormal) leaves E = 1 − Σ⟨ûv̂ᵀ, Ȳ⟩²/‖Ȳ‖².
    task = make_task("teacher-student", "smoke", {**LARGE, "snr": [3.0, 2.0]})
    data = task.make_data(1)
    teacher = data["teacher"].numpy().astype(np.float64)
    u, _, vt = top_modes(data["targets"].numpy(), k=2)
    projections = np.einsum("ok,oi,ki->k", u, teacher, vt)
    empirical = 1.0 - np.sum(projections**2) / np.sum(teacher**2)
    assert empirical == pytest.approx(theory_optimum(snr=[3.0, 2.0], aspect=0.5), abs=0.03)


def test_observed_errors_are_normalized_frobenius_errors():
    task = make_task("teacher-student", "smoke", {"steps": 150})
    profile = load("cpu-2core")
    trainer = Trainer(task, load_entry(REPO_SGD), profile)
    data = task.make_data(0)
    model = task.make_model(0)
    optimizer, _ = trainer.make_optimizer(model, seed=0)
    trainer.train(model, optimizer, data, seed=0, steps=150)
    observed = trainer.observe(model, optimizer, data, seed=0)
    w2, w1 = (p.detach().numpy().astype(np.float64) for p in (model.weights[1], model.weights[0]))
    product = w2 @ w1
    teacher = data["teacher"].numpy().astype(np.float64)
    targets = data["targets"].numpy().astype(np.float64)
    assert observed["test_error"] == pytest.approx(
        np.linalg.norm(product - teacher) ** 2 / np.linalg.norm(teacher) ** 2, rel=1e-5)
    assert observed["train_error"] == pytest.approx(
        np.linalg.norm(product - targets) ** 2 / np.linalg.norm(targets) ** 2, rel=1e-5)
    # Predictions of the one-hot examples are the columns of W₂W₁: the loss is ½‖W₂W₁ − Y‖²_F.
    assert float(task.loss(model, data).detach()) == pytest.approx(
        0.5 * np.linalg.norm(product - targets) ** 2, rel=1e-5)


def test_early_stopped_error_approaches_theory(make_entry, tmp_path):
    """Gradient descent from a small init stopped at its best step reaches ≈ 1 − O².

    1 − O² is the paper's approximation of the optimum (the best rescaling of the data's top
    mode); at N₁ = 200, N₃ = 100 its finite-size spread across seeds is ≈ 0.02, so each seed
    must be within 0.04 and the 3-seed mean within 0.025.
    """
    entry = make_entry("gd", hparams="[hparams.default]\nlr = 0.01\n")
    sets = ["n_in=200", "n_out=100", "hidden=100", "snr=[3.0]", "steps=300", "evals=80"]
    runs = runner.run_suite(entry, tasks=["teacher-student"], seeds=3, tier="smoke", sets=sets,
                            out=tmp_path / "out", progress=False)
    best = runs[runs.metric == "min_test_error"].value.to_numpy()
    theory = optimal_test_error_rank_one(signal=3.0, aspect=0.5)  # ≈ 0.158
    np.testing.assert_allclose(best, theory, atol=0.04)
    assert best.mean() == pytest.approx(theory, abs=0.025)
    # The optimum is found early and the target (within ×NEAR_OPTIMUM) is met before it.
    metrics = runs.pivot(index="seed", columns="metric", values="value")
    assert (metrics.steps_to_near_optimum <= metrics.best_step).all()
    assert ((metrics.best_step > 100) & (metrics.best_step < 300)).all()


def test_summary_of_a_hand_built_curve():
    task = make_task("teacher-student", "smoke", {})  # rank one, s̄ = 3: optimum ≈ 0.158
    steps = np.array([0, 10, 20, 40, 80, 160])
    test = np.array([1.0, 0.5, 0.15, 0.4, 2.0, 3.0])
    train = np.array([1.0, 0.6, 0.5, 0.3, 0.1, 0.0])
    out = task.summarize(steps, {"train_error": train, "test_error": test}, None)
    assert out["min_test_error"] == 0.15 and out["best_step"] == 20
    assert out["final_test_error"] == 3.0 and out["overfit_ratio"] == pytest.approx(20.0)
    assert out["final_gap"] == pytest.approx(3.0) and out["max_gap"] == pytest.approx(3.0)
    # Threshold ×1.25 of the optimum, crossed between steps 10 (0.5) and 20 (0.15).
    threshold = NEAR_OPTIMUM * optimal_test_error_rank_one(signal=3.0, aspect=0.5)
    assert out["steps_to_near_optimum"] == pytest.approx(10 + 10 * (0.5 - threshold) / 0.35)
    never = task.summarize(steps, {"train_error": train, "test_error": np.full(6, 0.5)}, None)
    assert never["steps_to_near_optimum"] == math.inf
    assert set(out) == set(task.metrics())


def test_sgd_baseline_smoke_run_overfits_after_the_optimum(tmp_path):
    runs = runner.run_suite(REPO_SGD, tasks=["teacher-student"], seeds=2, tier="smoke",
                            out=tmp_path / "out", progress=False)
    assert (runs.status == "ok").all()
    assert np.isfinite(runs.value).all()
    metrics = runs.pivot(index="seed", columns="metric", values="value")
    # Early stopping matters: the memorised end state is far worse than the optimum.
    assert (metrics.overfit_ratio > 5).all()
    assert (metrics.final_test_error > 1.0).all()  # worse than predicting zero
    assert (metrics.steps_to_near_optimum <= metrics.best_step).all()


@pytest.mark.parametrize("bad", [{"snr": [3.0, -1.0]}, {"snr": []}, {"noise": 0.0}])
def test_rejects_bad_config(bad):
    with pytest.raises(ValueError, match="snr|noise"):
        make_task("teacher-student", "smoke", bad).make_data(0)
