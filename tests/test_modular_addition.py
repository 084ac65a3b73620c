"""modular-addition: the data split, the model, the observed curves, the metrics and a smoke run."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from suite import runner, seeding
from suite.loop import torch_threads
from suite.registry import make_task
from suite.results import read_results
from suite.tasks.modular_addition import split_pairs

BASELINES = Path(__file__).resolve().parents[1] / "baselines"


@settings(max_examples=40, deadline=None)
@given(p=st.integers(2, 40), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_split_covers_every_pair_once_with_exact_fraction(p, fraction, seed):
    n_train = round(fraction * p * p)
    assume(0 < n_train < p * p)
    data = split_pairs(p=p, train_fraction=fraction, generator=seeding.generator(seed, "data"))
    pairs = torch.cat([data["train_x"], data["test_x"]]).numpy()
    labels = torch.cat([data["train_y"], data["test_y"]]).numpy()
    assert len(data["train_x"]) == n_train and len(pairs) == p * p
    # Every (a, b) exactly once: the codes a·p + b are a permutation of 0..p²−1.
    np.testing.assert_array_equal(np.sort(pairs[:, 0] * p + pairs[:, 1]), np.arange(p * p))
    np.testing.assert_array_equal(labels, (pairs[:, 0] + pairs[:, 1]) % p)


def test_split_is_deterministic_per_seed_and_differs_across_seeds():
    task = make_task("modular-addition", "smoke", {})
    first, again, other = task.make_data(0), task.make_data(0), task.make_data(1)
    for key in first:
        torch.testing.assert_close(first[key], again[key])
    assert not torch.equal(first["train_x"], other["train_x"])
    cfg = task.config
    assert len(first["train_x"]) == round(cfg["train_fraction"] * cfg["p"] ** 2)


@pytest.mark.parametrize("p, fraction", [(1, 0.5), (5, 0.0), (5, 1.0), (5, 0.01)])
def test_rejects_degenerate_splits(p, fraction):
    with pytest.raises(ValueError, match="p must|train_fraction"):
        split_pairs(p=p, train_fraction=fraction, generator=seeding.generator(0, "data"))


def test_forward_equals_concatenated_embedding_mlp():
    """The table-projection forward is the plain MLP on [E_a; E_b]."""
    task = make_task("modular-addition", "smoke", {})
    model, data = task.make_model(0), task.make_data(0)
    with torch.no_grad():
        model.b_in.copy_(torch.randn(model.b_in.shape, generator=seeding.generator(0, "t")))
        model.b_out.copy_(torch.randn(model.b_out.shape, generator=seeding.generator(1, "t")))
    x = data["test_x"]
    concat = torch.cat([model.embed[x[:, 0]], model.embed[x[:, 1]]], dim=1)  # (N, 2d)
    reference = torch.relu(concat @ model.w_in.T + model.b_in) @ model.w_out.T + model.b_out
    torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-5)


def test_index_select_lookup_is_bit_identical_to_advanced_indexing():
    """The forward looks rows up with index_select (2x faster on a CPU); the committed results
    were made with left[pairs[:, 0]]. Both give the same logits and gradients bit for bit, one
    seed alone and vmapped over seeds, so those results stay valid."""
    from torch.func import functional_call, grad, vmap

    from suite.tasks.modular_addition import ModularMLP

    class Indexed(ModularMLP):  # the formulation the committed results were made with
        def forward(self, pairs):
            d = self.embed.shape[1]
            left, right = self.embed @ self.w_in[:, :d].T, self.embed @ self.w_in[:, d:].T
            hidden = torch.relu(left[pairs[:, 0]] + right[pairs[:, 1]] + self.b_in)
            return hidden @ self.w_out.T + self.b_out

    task = make_task("modular-addition", "standard", {})
    data = task.make_data(0)
    x, y = data["train_x"], data["train_y"]  # (N, 2), (N,)
    models = [task.make_model(seed) for seed in range(3)]
    template = models[0]
    indexed = Indexed(template.embed, template.w_in, template.w_out)
    stacked = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
               for n, _ in template.named_parameters()}  # (3, ...) per parameter

    def loss(params, module):
        return torch.nn.functional.cross_entropy(functional_call(module, params, (x,)), y)

    one = {n: t[1] for n, t in stacked.items()}

    def autograd(module):
        params = {n: t.clone().requires_grad_() for n, t in one.items()}
        loss(params, module).backward()
        return {n: t.grad for n, t in params.items()}

    with torch_threads(1):  # the cpu-2core profile's, on which the results were made
        assert torch.equal(functional_call(template, one, (x,)), functional_call(indexed, one, (x,)))
        g_select, g_index = autograd(template), autograd(indexed)
        v_select = vmap(grad(loss), in_dims=(0, None))(stacked, template)
        v_index = vmap(grad(loss), in_dims=(0, None))(stacked, indexed)
        for n in one:
            assert torch.equal(g_select[n], g_index[n]), n
            assert torch.equal(v_select[n], v_index[n]), n
            assert torch.equal(v_select[n][1], g_select[n]), n
    # On two threads advanced indexing's backward sums in another order under vmap than alone
    # (1e-9 apart); index_select's gradient stays the same batched or not.
    with torch_threads(2):
        alone, batched = autograd(template), vmap(grad(loss), in_dims=(0, None))(stacked, template)
        assert all(torch.equal(batched[n][1], alone[n]) for n in one)


def test_init_is_seeded_and_leaves_the_global_rng_alone():
    task = make_task("modular-addition", "smoke", {})
    state = torch.random.get_rng_state()
    a, b, c = task.make_model(0), task.make_model(0), task.make_model(1)
    task.make_data(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, x), y, z in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(x, y)
        if not name.startswith("b_"):  # biases start at zero for every seed
            assert not torch.equal(x, z)


def test_observed_accuracy_and_loss_match_numpy():
    task = make_task("modular-addition", "smoke", {})
    model, data = task.make_model(2), task.make_data(2)
    with torch.no_grad():
        observed = task.observe(model, data)
        for part in ("train", "test"):
            logits = model(data[f"{part}_x"]).double().numpy()
            labels = data[f"{part}_y"].numpy()
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss = -log_probs[np.arange(len(labels)), labels].mean()
            assert observed[f"{part}_loss"] == pytest.approx(loss, rel=1e-5)
            assert observed[f"{part}_acc"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert set(observed) == {"train_acc", "test_acc", "train_loss", "test_loss"}


def test_metrics_of_a_hand_built_grokking_curve():
    task = make_task("modular-addition", "smoke", {})
    steps = np.array([0, 10, 100, 1000, 2000, 4000])
    train = np.array([0.0, 0.5, 0.995, 1.0, 1.0, 1.0])
    test = np.array([0.0, 0.0, 0.02, 0.40, 0.991, 1.0])
    out = task.summarize(steps, {"train_acc": train, "test_acc": test}, None)
    assert set(out) == set(task.metrics())
    assert out["steps_to_train"] == 100 and out["steps_to_test"] == 2000
    assert out["grokking_delay"] == 1900
    assert out["final_test_acc"] == 1.0 and out["final_gap"] == pytest.approx(0.0)
    assert out["max_gap"] == pytest.approx(0.975)  # at step 100: 0.995 − 0.02

    never = task.summarize(steps, {"train_acc": train, "test_acc": np.minimum(test, 0.98)}, None)
    assert never["steps_to_test"] == math.inf and never["grokking_delay"] == math.inf
    assert never["steps_to_train"] == 100 and never["final_gap"] == pytest.approx(0.02)

    unfit = task.summarize(steps, {"train_acc": np.full(6, 0.5), "test_acc": np.full(6, 0.1)}, None)
    assert unfit["steps_to_train"] == math.inf and unfit["grokking_delay"] == math.inf


def test_adamw_groks_and_adam_memorises_in_the_smoke_tier(tmp_path):
    """AdamW with weight decay fits first and generalizes later; without decay it only fits."""
    out = tmp_path / "out"
    runs = runner.run_suite(BASELINES / "adamw", tasks=["modular-addition"], tier="smoke", out=out,
                            progress=False)
    assert (runs.status == "ok").all()
    m = runs.set_index("metric").value
    assert np.isfinite(m).all()
    assert m.steps_to_train < m.steps_to_test and m.grokking_delay >= 3 * m.steps_to_train
    assert m.final_test_acc >= 0.99 and m.max_gap > 0.9

    runs = runner.run_suite(BASELINES / "adam", tasks=["modular-addition"], tier="smoke",
                            out=tmp_path / "adam", progress=False)
    m = runs.set_index("metric").value
    assert math.isfinite(m.steps_to_train) and m.steps_to_test == math.inf
    assert m.grokking_delay == math.inf and m.final_gap > 0.5

    _, curves = read_results(out)
    assert set(curves.metric) == {"train_acc", "test_acc", "train_loss", "test_loss"}
    assert curves.value.between(0, math.inf).all()
