"""Grokking on modular addition: a small MLP fits the training pairs long before it generalizes.

Model interface (architecture entries): `forward(pairs)` int64 (N, 2) operand pairs → float
(N, p) logits of (a + b) mod p. Every metric reads only the predictions, so any such model
qualifies (e.g. the one-layer transformer of Nanda et al. 2023, baselines/transformer-1l).
Reference optimizer: AdamW lr 3e-3, betas (0.9, 0.98), weight decay 1 (the AdamW baseline's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from suite import seeding
from suite.metrics.generalization import gap_summary, grokking_delay
from suite.task import Curve, Metric, ModelInterface, Plot, Task

THRESHOLD = 0.99  # "reached" means accuracy ≥ 99%, for train and test alike


def split_pairs(*, p: int, train_fraction: float,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """All p² pairs (a, b) with labels (a + b) mod p, split at random into train and test.

    The training set has exactly round(train_fraction · p²) pairs; every pair is in exactly one
    of the two sets. Returns train_x, test_x (n, 2) int64 and train_y, test_y (n,) int64.
    """
    if p < 2:
        raise ValueError(f"p must be an integer ≥ 2, got {p}")
    n_train = round(train_fraction * p * p)
    if not 0 < n_train < p * p:
        raise ValueError(f"train_fraction {train_fraction} leaves an empty train or test set "
                         f"among the {p * p} pairs; choose a value strictly between 0 and 1")
    a = torch.arange(p).repeat_interleave(p)  # (p²,): 0 0 … 1 1 …
    b = torch.arange(p).repeat(p)  # (p²,): 0 1 … 0 1 …
    pairs, labels = torch.stack([a, b], dim=1), (a + b) % p
    order = torch.randperm(p * p, generator=generator)
    train, test = order[:n_train], order[n_train:]
    return {"train_x": pairs[train], "train_y": labels[train],
            "test_x": pairs[test], "test_y": labels[test]}


class ModularMLP(nn.Module):
    """logits = W₂ ReLU(W₁ [E_a; E_b] + b₁) + b₂ with one embedding table E shared by a and b."""

    def __init__(self, embed: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> None:
        super().__init__()
        self.embed = nn.Parameter(embed)  # E (p, d)
        self.w_in = nn.Parameter(w_in)  # W₁ (width, 2d): first d columns read a, last d read b
        self.b_in = nn.Parameter(torch.zeros(w_in.shape[0]))
        self.w_out = nn.Parameter(w_out)  # W₂ (p, width)
        self.b_out = nn.Parameter(torch.zeros(w_out.shape[0]))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        d = self.embed.shape[1]
        # W₁[E_a; E_b] = (E W₁ᵃᵀ)[a] + (E W₁ᵇᵀ)[b]: project the p-row table once, then look up,
        # instead of multiplying every one of the N concatenated pairs.
        left = self.embed @ self.w_in[:, :d].T  # (p, width)
        right = self.embed @ self.w_in[:, d:].T  # (p, width)
        # index_select, not left[pairs[:, 0]]: the same rows and, on one thread, the same
        # gradients bit for bit (so results made before stay valid), 2x faster forward and
        # backward on a CPU; and on two threads its gradient is the same vmapped or not, which
        # advanced indexing's is not (tests/test_modular_addition.py).
        hidden = F.relu(left.index_select(0, pairs[:, 0]) + right.index_select(0, pairs[:, 1])
                        + self.b_in)  # (N, width)
        return hidden @ self.w_out.T + self.b_out  # (N, p)


class ModularAddition(Task):
    """Metric roles and resolutions.

    Ranked: `steps_to_train`, `steps_to_test` (the target), `grokking_delay` (+inf unless the
    test accuracy gets there, so an under-trained run never wins it) and `final_test_acc`.
    Diagnostic: `final_gap` and `max_gap` (train − test accuracy) are smallest for a run that
    fits nothing at all: a Lion with a tiny learning rate ranked first on `max_gap`.

    Resolutions: accuracies and their gaps are fractions of a finite set, so one example is the
    floor: 1/n_test for `final_test_acc` (1/1741 on the standard tier), 1/min(n_train, n_test)
    for the gaps. The steps metrics are the first evaluation step at which accuracy was
    observed at ≥ 99% (`first_step_reaching`), not interpolated between evaluations (an
    accuracy moves in jumps of one example, so a line between two evaluations would be a guess):
    each is an upper bound on the true crossing, by at most the gap between evaluations, which
    are log-spaced (on the standard tier 57, 84 and 111 steps apart near steps 1,000, 1,500 and
    2,000). Their floor is 1 step, as for every step count; two runs' values are then equal or
    at least one evaluation gap apart, and a rounding difference that moves an accuracy across
    99% at one evaluation moves the value by a whole gap.
    """

    name = "modular-addition"
    version = 1
    family = "generalization-gap"
    description = (
        "Grokking (Power et al. 2022): all pairs (a, b) labelled (a + b) mod p, a fixed random "
        "fraction of them for training and the rest for testing; a shared embedding of both "
        "operands, concatenated, one hidden ReLU layer and a linear readout, trained full batch "
        "with cross-entropy. Training accuracy saturates early, test accuracy can follow much "
        "later; the entry's optimizer (weight decay included) sets the delay. Measures the steps "
        "to 99% train and test accuracy, the delay between them, and the accuracy gap."
    )
    target = "steps_to_test"
    interface = ModelInterface(
        inputs="int64 (N, 2): operand pairs (a, b), each in [0, p)",
        outputs="float (N, p): logits of (a + b) mod p",
        optimizer=("adamw", (("lr", 3e-3), ("betas", (0.9, 0.98)), ("weight_decay", 1.0))))
    # Standard tier, chosen by a small sweep (seed 0, then 5 seeds) so that the AdamW baseline
    # (lr 3e-3, β₂ 0.98, weight decay 1) groks on 2 CPU cores in well under a minute per seed:
    # p = 59 with half of the 3481 pairs for training fits in ≈150 steps and reaches 99% test
    # accuracy at 1000-2100 (5 seeds); 4000 steps leave a 2× margin. Weight decay sets the
    # delay (≈1/(lr·wd)): 0.5 needs ≈4700 steps, 2 about half as many as 1, and without decay
    # (Adam, SGD) the test accuracy stays near 0. Width 128 and embedding 32 are the smallest
    # that fit quickly; the smoke tier (p = 31, 80% train) groks within its 1500 steps.
    invalid_configs = ({"p": 1}, {"train_fraction": 0.0}, {"train_fraction": 1.5}, {"width": 0},
                       {"embed_dim": 0}, {"init_scale": 0.0})
    tiers = {
        "smoke": dict(steps=1500, evals=60, p=31, train_fraction=0.8, embed_dim=32, width=128,
                      init_scale=1.0),
        "standard": dict(steps=4000, evals=150, p=59, train_fraction=0.5, embed_dim=32, width=128,
                         init_scale=1.0),
    }

    def check_config(self) -> None:
        super().check_config()
        self.require_int("p", low=2)
        self.require_number("train_fraction", 0.0, 1.0, open_low=True)
        p, n_train = self.config["p"], round(self.config["train_fraction"] * self.config["p"] ** 2)
        self.require("train_fraction", 0 < n_train < p * p,
                     f"a fraction that leaves both the train and the test set of the {p * p} "
                     "pairs non-empty")
        for key in ("embed_dim", "width"):
            self.require_int(key)
        self.require_number("init_scale", 0.0, open_low=True)

    @property
    def set_sizes(self) -> tuple[int, int]:
        """(n_train, n_test): the numbers of pairs in each set."""
        p = self.config["p"]
        n_train = round(self.config["train_fraction"] * p * p)
        return n_train, p * p - n_train

    def metrics(self) -> dict[str, Metric]:
        n_train, n_test = self.set_sizes
        steps, acc = (0.0, math.inf), (0.0, 1.0)
        one_example = 1.0 / min(n_train, n_test)
        return {
            "steps_to_train": Metric("min", "steps until training accuracy ≥ 99%", "steps",
                                     steps_to_target=True, role="ranked", resolution=1.0,
                                     bounds=steps),
            "steps_to_test": Metric("min", "steps until test accuracy ≥ 99%", "steps",
                                    steps_to_target=True, role="ranked", resolution=1.0,
                                    bounds=steps),
            "grokking_delay": Metric(
                "min", "steps_to_test − steps_to_train (+inf if test accuracy never reaches "
                "99%): lower is better, i.e. generalizing soon after fitting", "steps",
                steps_to_target=True, role="ranked", resolution=1.0),
            "final_test_acc": Metric("max", "test accuracy at the last step", role="ranked",
                                     resolution=1.0 / n_test, bounds=acc),
            "final_gap": Metric("min", "train − test accuracy at the last step", role="diagnostic",
                                resolution=one_example, bounds=(-1.0, 1.0)),
            "max_gap": Metric("min", "largest train − test accuracy over training",
                              role="diagnostic", resolution=one_example, bounds=(-1.0, 1.0)),
        }

    def curves(self) -> dict[str, Curve]:
        return {f"{part}_{kind}": Curve(f"{part} {what}", bounds=bounds) for part in ("train", "test")
                for kind, what, bounds in (("acc", "accuracy", (0.0, 1.0)),
                                           ("loss", "cross-entropy", (0.0, math.inf)))}

    def plots(self) -> list[Plot]:
        return [Plot("panels", "accuracy", "Train and test accuracy", "Train (dashed) and test "
                     "(solid) accuracy over training; the shaded span is the grokking delay, from "
                     "reaching the train target to reaching the test target (means over seeds).",
                     ylabel="accuracy", curves=("train_acc", "test_acc"),
                     labels=("train acc", "test acc"), styles=("C0--", "C3-"),
                     span=("steps_to_train", "steps_to_test"), span_label="grokking delay")]

    def make_data(self, seed: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        return split_pairs(p=cfg["p"], train_fraction=cfg["train_fraction"],
                           generator=seeding.generator(seed, "data"))

    def reference_model(self, generator: torch.Generator) -> ModularMLP:
        cfg = self.config
        p, d, width, scale = cfg["p"], cfg["embed_dim"], cfg["width"], cfg["init_scale"]
        gen = generator
        # Unit-variance embeddings and 1/fan-in weights keep pre-activations and logits O(1) at
        # init_scale = 1; a larger init_scale lengthens grokking (Liu et al. 2023, Omnigrok).
        embed = scale * torch.randn(p, d, generator=gen)
        w_in = scale * torch.randn(width, 2 * d, generator=gen) / (2 * d) ** 0.5
        w_out = scale * torch.randn(p, width, generator=gen) / width ** 0.5
        return ModularMLP(embed, w_in, w_out)

    def probe(self, data):
        x = data["train_x"][:8]  # (8, 2)
        return x, (len(x), self.config["p"])

    def loss(self, model: ModularMLP, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(batch["train_x"]), batch["train_y"])

    def observe(self, model: ModularMLP, data: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for part in ("train", "test"):
            logits, labels = model(data[f"{part}_x"]), data[f"{part}_y"]
            out[f"{part}_acc"] = float((logits.argmax(dim=1) == labels).float().mean())
            out[f"{part}_loss"] = float(F.cross_entropy(logits, labels))
        return out

    def summarize(self, steps, curves, data) -> dict[str, float]:
        train_acc, test_acc = curves["train_acc"], curves["test_acc"]
        times = grokking_delay(steps=steps, train_acc=train_acc, test_acc=test_acc,
                               threshold=THRESHOLD)
        # Gap of errors (1 − acc): test error − train error = train acc − test acc.
        gaps = gap_summary(train=1.0 - train_acc, test=1.0 - test_acc)
        return {"steps_to_train": times["steps_to_train"], "steps_to_test": times["steps_to_test"],
                "grokking_delay": times["delay"], "final_test_acc": float(test_acc[-1]), **gaps}
