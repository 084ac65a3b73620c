"""markov-attention: the exact entropy ladder against closed forms and Monte Carlo, the model,
the stage metrics on hand-made curves, and training against the ladder."""

import itertools
import math

import numpy as np
import pytest
import torch

from suite import runner, seeding
from suite.metrics.markov import (
    conditional_entropy,
    entropy_table,
    greedy_ladder,
    lag_attention,
    lags_covered,
    next_token_probs,
    plateau_gaps,
    sample_sequences,
    stage_times,
    window_laws,
)
from suite.registry import make_task
from suite.task import ConfigError

CHAIN = dict(lags=[1, 3], strengths=[2.0, 1.0], shifts=[1, 2], vocab=4)


def test_single_lag_entropy_matches_closed_form():
    """One lag: given x_{t−k}, x_t is e^β/Z on one token and 1/Z on the V − 1 others,
    Z = e^β + V − 1."""
    V, beta = 5, 1.7
    table = entropy_table(length=9, lags=[2], strengths=[beta], shifts=[3], vocab=V)
    Z = math.exp(beta) + V - 1
    hi, lo = math.exp(beta) / Z, 1 / Z
    assert table[(2,)] == pytest.approx(-hi * math.log(hi) - (V - 1) * lo * math.log(lo), abs=1e-12)
    assert table[()] == pytest.approx(math.log(V), abs=1e-12)


def test_laws_are_distributions_with_the_chain_conditional():
    laws = window_laws(length=8, **CHAIN)
    K = max(CHAIN["lags"])
    assert len(laws) == 8 - K
    windows = torch.tensor(list(itertools.product(range(4), repeat=K)))  # every window
    cond = next_token_probs(windows=windows, **CHAIN).numpy()  # (4^K, V)
    for law in laws:
        assert law.sum() == pytest.approx(1.0, abs=1e-12)
        flat = law.reshape(-1, 4)
        np.testing.assert_allclose(flat / flat.sum(axis=1, keepdims=True), cond, atol=1e-12)


def test_ladder_decreases_with_more_lags():
    table = entropy_table(length=10, **CHAIN)
    for small, big in itertools.combinations(table, 2):
        if set(small) < set(big):
            assert table[big] <= table[small] + 1e-12  # conditioning never raises entropy
    order, levels = greedy_ladder(table)
    assert sorted(order) == CHAIN["lags"] and levels == sorted(levels, reverse=True)


def test_ladder_matches_monte_carlo_on_samples():
    """Empirical joint frequencies of (x_S, x_t) at every position converge to the exact laws,
    and the plug-in conditional entropies to the ladder (bias ~ cells/N ≪ tolerance)."""
    n, length = 40_000, 9
    x = sample_sequences(n=n, length=length, generator=seeding.generator(0, "test"), **CHAIN).numpy()
    laws, K, V = window_laws(length=length, **CHAIN), 3, 4
    table = entropy_table(length=length, **CHAIN)
    for subset in table:
        estimates = []
        for t, law in zip(range(K, length), laws, strict=True):
            cols = [t - k for k in sorted(subset, reverse=True)] + [t]  # oldest lag first, then x_t
            counts = np.zeros((V,) * len(cols))
            np.add.at(counts, tuple(x[:, c] for c in cols), 1.0)
            keep = sorted({K - k for k in subset}) + [K]
            exact = law.sum(axis=tuple(i for i in range(K + 1) if i not in keep))
            assert np.abs(counts / n - exact).max() < 6 * math.sqrt(0.25 / n)
            empirical = counts / n
            h_joint = -(empirical[empirical > 0] * np.log(empirical[empirical > 0])).sum()
            marg = empirical.sum(axis=-1)
            estimates.append(h_joint + (marg[marg > 0] * np.log(marg[marg > 0])).sum())
            assert conditional_entropy(law=law, subset=subset) >= 0
        assert np.mean(estimates) == pytest.approx(table[subset], abs=0.01)
    # The full chain's entropy is E[−log P(x_t | window)], which needs no plug-in at all.
    windows = torch.from_numpy(x).unfold(1, K, 1)[:, : length - K]
    probs = next_token_probs(windows=windows, **CHAIN)
    logp = probs.gather(-1, torch.from_numpy(x[:, K:, None])).log()
    assert float(-logp.mean()) == pytest.approx(table[(1, 3)], abs=4 * float(logp.std()) / math.sqrt(n))


def test_stage_times_and_plateau_gaps_of_a_staircase():
    """A hand-made loss that sits on each level then drops: the crossings are the drop midpoints
    and the plateau gaps are the offsets put in by hand."""
    levels = [2.0, 1.5, 1.2]
    steps = np.arange(0, 3001, 10)
    # On 2.0 until step 1000, linear down to 1.51 by 1100, on 1.51 until 2000, down to 1.2 by 2100.
    loss = np.interp(steps, [0, 1000, 1100, 2000, 2100, 3000], [2.0, 2.0, 1.51, 1.51, 1.2, 1.2])
    times = stage_times(steps=steps, loss=loss, levels=levels)
    # Linear segments: the interpolated crossing of each midpoint is exact.
    np.testing.assert_allclose(times, [1000 + 100 * 0.25 / 0.49, 2000 + 100 * 0.16 / 0.31])
    gaps = plateau_gaps(steps=steps, loss=loss, levels=levels, times=times)
    np.testing.assert_allclose(gaps, [0.0, 0.01], atol=1e-9)
    never = stage_times(steps=steps, loss=np.full(len(steps), 2.0), levels=levels)
    assert np.all(np.isinf(never))
    assert np.all(np.isnan(plateau_gaps(steps=steps, loss=loss, levels=levels, times=never)[1:]))


def test_lag_attention_and_coverage_on_hand_made_patterns():
    T, lags = 8, [1, 3]
    attn = torch.zeros(2, 3, T, T)  # (B, H, T, T)
    for i in range(T):
        attn[:, 0, i, i] = 1.0  # head 0: the query's own token, i.e. lag 1 of x_{i+1}
        attn[:, 1, i, max(i - 2, 0)] = 1.0  # head 1: lag 3
        attn[:, 2, i, : i + 1] = 1.0 / (i + 1)  # head 2: uniform
    mass = lag_attention(attention=attn, lags=lags, first=3).numpy()
    np.testing.assert_allclose(mass[0], [1, 0])
    np.testing.assert_allclose(mass[1], [0, 1])
    np.testing.assert_allclose(mass[2], np.mean([1 / (i + 1) for i in range(2, T)]))
    assert lags_covered(mass=mass, threshold=0.5) == 2
    assert lags_covered(mass=mass[[0, 2]], threshold=0.5) == 1


def test_model_is_causal_seeded_and_buffer_free():
    task = make_task("markov-attention", "smoke", {})
    state = torch.random.get_rng_state()
    model, same, other = task.make_model(0), task.make_model(0), task.make_model(1)
    data = task.make_data(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not list(model.buffers())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True))
    assert not torch.equal(model.embed, other.embed)
    x = data["eval"][:4]
    changed = x.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % task.config["vocab"]
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :7], model(changed)[:, :7])
        assert not torch.allclose(model(x)[:, 7:], model(changed)[:, 7:])
        attn = model.attention(x)
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
    assert float(attn.triu(diagonal=1).abs().max()) == 0.0


@pytest.mark.parametrize("key, value", [("lags", [0, 2]), ("strengths", [1.0, -1.0]), ("length", 3),
                                        ("shifts", [1]), ("heads", 0), ("vocab", 64)])
def test_check_config_rejects_nonsense(key, value):
    with pytest.raises(ConfigError, match=key if key not in ("shifts", "strengths") else "lags"):
        make_task("markov-attention", "smoke", {key: value}).check_config()


def test_training_descends_the_ladder(tmp_path):
    """AdamW on the smoke tier: the first plateau sits on L_0, the stages complete in ladder
    order, the loss ends within the target of L_m, and one head covers each lag."""
    task = make_task("markov-attention", "smoke", {})
    order, levels = task.ladder()
    runs = runner.run_suite("baselines/adamw", tasks=["markov-attention"], seeds=1, tier="smoke",
                            out=tmp_path, progress=False)
    v = runs.set_index("metric")["value"]
    assert v[f"stage_time/lag_{order[0]}"] < v[f"stage_time/lag_{order[1]}"] < math.inf
    assert abs(v["plateau_gap/stage_0"]) < 0.05
    assert v["final_excess"] < 0.05 * (levels[0] - levels[-1])
    assert v["lags_covered"] == 2


@pytest.mark.parametrize("tier", ["smoke", "standard"])
def test_tiers_pass_check_config_and_their_target_needs_every_lag(tier):
    """Without the ladder's last lag the excess is at least L_{m−1} − L_m (a lag-subset
    predictor), which must exceed the target's 5% of L_0 − L_m."""
    task = make_task("markov-attention", tier, {})
    task.check_config()
    _, levels = task.ladder()
    assert levels[-2] - levels[-1] > 0.05 * (levels[0] - levels[-1])
