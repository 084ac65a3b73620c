"""deep-linear-modes against Saxe et al.'s closed-form learning trajectory."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from suite import runner
from suite.registry import make_task
from suite.tasks.deep_linear_modes import saxe_half_time, saxe_mode_strength

S = [3.0, 2.0, 1.0]
LR, U0 = 0.002, 1e-3


def closed_form_run(make_entry, tmp_path, depth=2, steps=3000):
    entry = make_entry("gd", hparams=f"[hparams.default]\nlr = {LR}\n")
    sets = ["init=aligned", f"init_scale={U0}", f"depth={depth}", f"steps={steps}",
            "evals=400", f"singular_values={S}"]
    runs = runner.run_suite(entry, tasks=["deep-linear-modes"], tier="smoke", sets=sets,
                            out=tmp_path / "out", progress=False)
    from suite.results import read_results

    _, curves = read_results(tmp_path / "out")
    return runs.set_index("metric")["value"], curves


def test_mode_strengths_follow_closed_form(make_entry, tmp_path):
    metrics, curves = closed_form_run(make_entry, tmp_path)
    for i, s in enumerate(S):
        curve = curves[curves.metric == f"mode/{i}"].sort_values("step")
        theory = saxe_mode_strength(s=s, u0=U0, t=curve.step.to_numpy(), lr=LR)
        # Discrete GD deviates from the ODE by O(lr·s) relative to the scale s.
        np.testing.assert_allclose(curve.value.to_numpy(), theory, atol=0.02 * s)


def test_stage_times_match_half_learning_time(make_entry, tmp_path):
    metrics, _ = closed_form_run(make_entry, tmp_path)
    for i, s in enumerate(S):
        expected = saxe_half_time(s=s, u0=U0, lr=LR)
        assert metrics[f"stage_time/mode_{i}"] == pytest.approx(expected, rel=0.02)
    assert metrics["modes_in_order"] == 1.0


def test_deeper_network_follows_its_ode(make_entry, tmp_path):
    """Depth D: τ du/dt = D u^{2−2/D} (s − u) (Saxe et al. 2013, N_l = D + 1 layers)."""
    depth = 3
    _, curves = closed_form_run(make_entry, tmp_path, depth=depth, steps=2500)
    for i, s in enumerate(S[:2]):
        curve = curves[curves.metric == f"mode/{i}"].sort_values("step")
        t = curve.step.to_numpy().astype(float)
        sol = solve_ivp(lambda _, u, s=s: LR * depth * u ** (2 - 2 / depth) * (s - u),
                        (0, t[-1]), [U0], t_eval=t, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(curve.value.to_numpy(), sol.y[0], atol=0.03 * s)


def test_closed_form_half_time_is_where_trajectory_is_half():
    for s in S:
        t_half = saxe_half_time(s=s, u0=U0, lr=LR)
        assert saxe_mode_strength(s=s, u0=U0, t=np.array([t_half]), lr=LR)[0] == pytest.approx(s / 2)


def test_random_init_learns_modes_in_order(make_entry, tmp_path):
    entry = make_entry("gd", hparams="[hparams.default]\nlr = 0.01\n")
    runs = runner.run_suite(entry, tasks=["deep-linear-modes"], seeds=2, tier="smoke",
                            out=tmp_path / "out", progress=False)
    in_order = runs[runs.metric == "modes_in_order"]["value"]
    assert (in_order == 1.0).all()
    assert np.isfinite(runs[runs.metric == "steps_to_all_modes"]["value"]).all()


def test_rejects_unsorted_singular_values():
    with pytest.raises(ValueError, match="singular_values=.* must be a strictly decreasing list"):
        make_task("deep-linear-modes", "smoke", {"singular_values": [1.0, 2.0]})
