"""fine-grained-collapse: NC1 against its formula, recovery on hand-built features, the data,
the model, and training against the phenomenon (features recover the fine labels, inputs not)."""

import math

import numpy as np
import pytest
import torch

from suite import runner
from suite.metrics.collapse import matched_accuracy, nc1, recovery_accuracy
from suite.registry import make_task
from suite.task import ConfigError


def test_nc1_of_a_hand_made_configuration():
    """Two classes in 2-D: means (±1, 0), each sample offset by (0, ±s). Then Σ_W = diag(0, s²),
    μ_G = 0, Σ_B = diag(1, 0), Σ_B⁺ = diag(1, 0): NC1 = tr(Σ_W Σ_B⁺)/2 = 0 — the offsets are
    orthogonal to the class means. Tilting them into the mean direction by (a, ±s) changes only
    Σ_W[0, 0] = a²: NC1 = a²/2."""
    s, a = 0.7, 0.3
    h = np.array([[1 + a, s], [1 - a, -s], [-1 + a, s], [-1 - a, -s]])
    labels = np.array([0, 0, 1, 1])
    assert nc1(features=h, labels=labels) == pytest.approx(a * a / 2, abs=1e-12)
    h0 = h.copy()
    h0[:, 0] = np.sign(h0[:, 0])
    assert nc1(features=h0, labels=labels) == pytest.approx(0.0, abs=1e-12)


def test_nc1_matches_the_definition_on_random_features():
    rng = np.random.default_rng(0)
    h, labels = rng.normal(size=(90, 5)), np.repeat(np.arange(3), 30)
    means = np.stack([h[labels == c].mean(0) for c in range(3)])
    sw = sum(np.outer(x - means[y], x - means[y]) for x, y in zip(h, labels, strict=True)) / 90
    sb = sum(np.outer(m - means.mean(0), m - means.mean(0)) for m in means) / 3
    assert nc1(features=h, labels=labels) == pytest.approx(np.trace(sw @ np.linalg.pinv(sb)) / 3)


def test_nc1_of_two_unbalanced_classes_is_the_closed_form():
    """Two classes: μ_c − μ_G = ±δ/2 with δ = μ₁ − μ₀ (μ_G the mean of the class means, as
    documented), so Σ_B = δδᵀ/4, Σ_B⁺ = 4δδᵀ/‖δ‖⁴ and NC1 = 2 δᵀΣ_W δ / ‖δ‖⁴: no pseudo-inverse.
    Classes of 19 and 38 samples, where the mean of the samples would differ."""
    rng = np.random.default_rng(7)
    labels = np.repeat([0, 1], [19, 38])
    h = rng.normal(size=(57, 5)) + 0.8 * labels[:, None]
    delta = h[labels == 1].mean(0) - h[labels == 0].mean(0)
    centred = h - np.where(labels[:, None] == 1, h[labels == 1].mean(0), h[labels == 0].mean(0))
    sw = centred.T @ centred / 57
    assert nc1(features=h, labels=labels) == pytest.approx(2 * delta @ sw @ delta / (delta @ delta) ** 2,
                                                           rel=1e-10)


@pytest.mark.parametrize("features, labels", [
    (np.zeros((64, 16)), np.repeat(np.arange(4), 16)),  # dead features: every class mean is 0
    (np.random.default_rng(1).normal(size=(64, 16)), np.zeros(64, dtype=int)),  # one class
    (np.tile(np.random.default_rng(2).normal(size=(16, 16)), (4, 1)), np.repeat(np.arange(4), 16)),
])
def test_nc1_is_undefined_where_the_class_means_coincide(features, labels):
    """The pseudo-inverse of Σ_B = 0 made NC1 0, "perfect collapse", for dead features."""
    assert math.isnan(nc1(features=features, labels=labels))


def test_matched_accuracy_ignores_cluster_names():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert matched_accuracy(clusters=np.array([5, 5, 3, 3, 9, 9]), labels=labels) == 1.0
    assert matched_accuracy(clusters=np.array([1, 1, 0, 0, 0, 0]), labels=labels) == pytest.approx(4 / 6)


def test_recovery_is_one_on_separated_fine_structure_and_chance_when_collapsed():
    rng = np.random.default_rng(1)
    coarse, fine = np.repeat(np.arange(3), 40), np.repeat(np.arange(6), 20)
    # Features = coarse centre + a fine offset ±5 along one axis + small noise: k-means splits
    # every coarse class exactly into its two fine classes.
    centre = 20.0 * np.eye(4)[coarse]
    offset = 5.0 * np.where(fine % 2 == 0, 1.0, -1.0)[:, None] * np.eye(4)[3]
    features = centre + offset + 0.1 * rng.normal(size=(120, 4))
    assert recovery_accuracy(features=features, coarse=coarse, fine=fine, rng=rng) == 1.0
    # Fully collapsed: every feature equals its coarse mean; one cluster, matched to one fine
    # class: exactly the chance level 1/2 of balanced pairs.
    assert recovery_accuracy(features=centre, coarse=coarse, fine=fine, rng=rng) == 0.5


def test_recovery_is_seeded():
    rng_data = np.random.default_rng(2)
    coarse, fine = np.repeat(np.arange(2), 50), np.repeat(np.arange(4), 25)
    features = rng_data.normal(size=(100, 3))
    values = [recovery_accuracy(features=features, coarse=coarse, fine=fine,
                                rng=np.random.default_rng(7)) for _ in range(2)]
    assert values[0] == values[1]


def test_data_labels_and_means():
    task = make_task("fine-grained-collapse", "smoke", {"n_train": 500})
    data = task.make_data(0)
    K, C = task.config["fine_classes"], task.config["fine_classes"] // 2
    assert torch.equal(data["train_coarse"], data["train_fine"] % C)
    assert torch.bincount(data["train_fine"]).tolist() == [500] * K
    # Each fine class's sample mean is near its circle point; antipodal pairs share a label.
    for i in range(K):
        mean = data["train_x"][data["train_fine"] == i, :2].mean(0)
        angle = 2 * math.pi * i / K
        target = task.config["radius"] * torch.tensor([math.cos(angle), math.sin(angle)])
        assert torch.allclose(mean, target, atol=0.3)
    spread = data["train_x"].std(0)
    assert spread[-1] > 3 * spread[2]  # the nuisance coordinates carry the large variance


def test_model_is_seeded_and_buffer_free():
    task = make_task("fine-grained-collapse", "smoke", {})
    state = torch.random.get_rng_state()
    a, b, c = task.make_model(0), task.make_model(0), task.make_model(1)
    task.make_data(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not list(a.buffers())
    assert torch.equal(a.w1, b.w1) and not torch.equal(a.w1, c.w1)
    x = torch.randn(5, task.config["dim"], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a(x), a.features(x) @ a.w_out.T + a.b_out)


@pytest.mark.parametrize("key, value", [("fine_classes", 5), ("fine_classes", 2), ("nuisance_dims", 15),
                                        ("radius", 0.0), ("width", 0)])
def test_check_config_rejects_nonsense(key, value):
    with pytest.raises(ConfigError, match=key):
        make_task("fine-grained-collapse", "smoke", {key: value}).check_config()


def test_training_collapses_and_recovers_fine_labels(tmp_path):
    """AdamW, smoke tier: NC1 falls and the features recover the fine labels (≥ 0.9) where the
    inputs and random features stay near chance."""
    runs = runner.run_suite("baselines/adamw", tasks=["fine-grained-collapse"], seeds=1, tier="smoke",
                            out=tmp_path, progress=False)
    v = runs.set_index("metric")["value"]
    assert v["final_recovery"] >= 0.9 and v["steps_to_recovery"] < math.inf
    assert v["input_recovery"] < 0.75 and v["random_feature_recovery"] < 0.75
    assert v["final_nc1"] < 0.2


@pytest.mark.parametrize("tier", ["smoke", "standard"])
def test_tiers_pass_check_config(tier):
    make_task("fine-grained-collapse", tier, {}).check_config()
