"""Generalization dynamics of a linear student on a noisy low-rank teacher (Lampinen & Ganguli 2018).

Model interface (architecture entries): `forward(x)` float (N, n_in) → (N, n_out), and
`product()` → (n_out, n_in), the end-to-end linear map the metrics read; a model without it is
not applicable. Reference optimizer: AdamW lr 1e-4 (the AdamW baseline's table).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from suite import seeding
from suite.metrics.generalization import (
    early_stopping,
    gap_summary,
    generalization_error,
    singular_vector_overlap,
)
from suite.metrics.stage_timing import crossing_step
from suite.task import Curve, Metric, ModelInterface, Plot, Task
from suite.tasks.deep_linear_modes import DeepLinear

# Floor of the relative errors (and their ratios and gaps): see TeacherStudent's docstring.
RES_ERROR = 1e-6
# The target: steps until the test error is within this factor of the theoretical optimum.
NEAR_OPTIMUM = 1.25


def theory_optimum(*, snr: list[float], aspect: float) -> float:
    """Lampinen & Ganguli's early-stopping optimum 1 − O², extended mode by mode to rank r.

    For well-separated teacher modes each data mode û_α v̂_αᵀ overlaps only its own teacher
    mode (in the large-size limit), so the best rescaling of each leaves s̄_α²(1 − O_α²) of
    the teacher's energy unexplained: E* = Σ s̄_α²(1 − O_α²) / Σ s̄_α². For one mode this is
    `optimal_test_error_rank_one`.
    """
    s2 = np.asarray(snr, dtype=np.float64) ** 2
    overlap2 = np.array([singular_vector_overlap(signal=s, aspect=aspect) ** 2 for s in snr])
    return float(np.sum(s2 * (1.0 - overlap2)) / np.sum(s2))


class TeacherStudent(Task):
    """Metric roles and resolutions.

    Ranked: `min_test_error` (the oracle early-stopping error: a run that never learns the
    signal cannot win it), `best_step` (when that optimum comes) and `steps_to_near_optimum`
    (the target). Diagnostic: `final_test_error`, `overfit_ratio`, `final_gap` and `max_gap`
    describe how much of the noise a run has fitted by its end, so a run that learns too slowly
    to reach the noise modes wins them (a Lion with a tiny learning rate ranked first on all
    four); they are shown, never ranked.

    Resolutions, measured by nudging every initial weight up by one ulp (torch.nextafter) and
    rerunning (smoke tier, seeds 0-1, Adam): the errors, their ratio and gaps moved by at most
    1.6e-8 (overfit_ratio) and best_step not at all. Floors: 1e-6 for the errors, ratio and gaps
    (60× the measured spread: room for other optimizers and the batched kernels' rounding) and
    1 step for `best_step` and `steps_to_near_optimum`.
    """

    name = "teacher-student"
    version = 1
    family = "generalization-gap"
    description = (
        "A two-layer linear student learns a low-rank linear teacher Ȳ = U S̄ Vᵀ from one-hot "
        "inputs and noisy targets Y = Ȳ + Z (noise drawn once), full batch, from a small "
        "initialisation. The student learns the data's strong modes first and the noise modes "
        "last, so the test error ‖W₂W₁ − Ȳ‖²_F/‖Ȳ‖²_F falls to an early-stopping optimum and "
        "then rises as the noise is fitted (Lampinen & Ganguli 2018). Measures the optimum, "
        "when it is reached, and how much the run overfits afterwards."
    )
    target = "steps_to_near_optimum"
    interface = ModelInterface(
        inputs="float (N, n_in): inputs", outputs="float (N, n_out): predictions",
        optimizer=("adamw", (("lr", 0.0001), ("weight_decay", 0.0))), requires=("product",))
    # snr: teacher singular values in units of the noise σ; noise entries are N(0, σ²/n_in)
    # (the scaling under which the paper's formulas hold, see suite.metrics.generalization;
    # REFERENCES.md's σ²/n_out does not reproduce them). Standard: A = n_out/n_in = 0.5 and a
    # rank-one teacher at s̄ = 3 (threshold A^{1/4} ≈ 0.84): the data's mode sits at ŝ ≈ 3.25
    # above the noise bulk edge 1 + √A ≈ 1.71, the optimum is 1 − O² ≈ 0.158, and a student
    # wide enough to memorise (hidden = n_out) ends near ‖Z‖²/‖Ȳ‖² ≈ n_out/s̄² ≈ 11. With
    # gradient descent at lr 0.01 (lr·ŝ ≈ 0.03) the optimum comes at step ≈ 200 and the noise
    # is fitted by ≈ 2000; 3000 steps take a few seconds.
    invalid_configs = ({"hidden": 0}, {"n_in": 0}, {"snr": []}, {"snr": [-1.0]}, {"noise": 0.0},
                       {"init_scale": -1e-3})
    tiers = {
        "smoke": dict(steps=800, evals=60, n_in=60, n_out=30, hidden=30, snr=[3.0],
                      noise=1.0, init_scale=1e-3),
        "standard": dict(steps=3000, evals=150, n_in=200, n_out=100, hidden=100, snr=[3.0],
                         noise=1.0, init_scale=1e-3),
    }

    @property
    def aspect(self) -> float:
        return self.config["n_out"] / self.config["n_in"]

    @property
    def optimum(self) -> float:
        return theory_optimum(snr=self.config["snr"], aspect=self.aspect)

    def check_config(self) -> None:
        super().check_config()
        for key in ("n_in", "n_out", "hidden"):
            self.require_int(key)
        snr, rank = self.config["snr"], min(self.config["n_in"], self.config["n_out"])
        self.require("snr", isinstance(snr, list) and 0 < len(snr) <= rank and all(
            isinstance(x, (int, float)) and x > 0 for x in snr),
            f"a list of 1 to min(n_in, n_out) = {rank} positive teacher singular values")
        self.require_number("noise", 0.0, open_low=True)
        self.require_number("init_scale", 0.0, open_low=True)

    def metrics(self) -> dict[str, Metric]:
        error, steps, gap = (0.0, math.inf), (0.0, math.inf), (-math.inf, math.inf)
        return {
            "min_test_error": Metric("min", "lowest test error over training: the oracle "
                                     "early-stopping error (theory ≈ Σ s̄²(1 − O²)/Σ s̄²)",
                                     role="ranked", resolution=RES_ERROR, bounds=error),
            "best_step": Metric("min", "step of the lowest test error (optimal early stopping); "
                                "earlier is better at an equal min_test_error", "steps",
                                role="ranked", resolution=1.0, bounds=steps),
            "final_test_error": Metric("min", "test error at the last step", role="diagnostic",
                                       resolution=RES_ERROR, bounds=error),
            "overfit_ratio": Metric("min", "final / minimum test error: how much fitting the "
                                    "noise costs after the optimum (1 = no overfitting)",
                                    role="diagnostic", resolution=RES_ERROR, bounds=(1.0, math.inf)),
            "final_gap": Metric("min", "test − train error at the last step", role="diagnostic",
                                resolution=RES_ERROR, bounds=gap),
            "max_gap": Metric("min", "largest test − train error over training", role="diagnostic",
                              resolution=RES_ERROR, bounds=gap),
            "steps_to_near_optimum": Metric(
                "min", f"steps until the test error is within ×{NEAR_OPTIMUM} of the "
                "theoretical early-stopping optimum", "steps", steps_to_target=True,
                role="ranked", resolution=1.0, bounds=steps),
        }

    def curves(self) -> dict[str, Curve]:
        return {"train_error": Curve("‖W₂W₁ − Y‖²_F / ‖Y‖²_F (the noisy targets)", bounds=(0.0, math.inf)),
                "test_error": Curve("‖W₂W₁ − Ȳ‖²_F / ‖Ȳ‖²_F (the clean teacher)", bounds=(0.0, math.inf))}

    def plots(self) -> list[Plot]:
        return [Plot("panels", "errors", "Train and test error", "Train (dashed) and test (solid) "
                     "error over training (means over seeds).", ylabel="error",
                     curves=("train_error", "test_error"), labels=("train error", "test error"),
                     styles=("C0--", "C3-"), logy=True)]

    def make_data(self, seed: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        snr = [float(s) for s in cfg["snr"]]
        n_in, n_out = cfg["n_in"], cfg["n_out"]
        if not snr or min(snr) <= 0 or len(snr) > min(n_in, n_out):
            raise ValueError(f"snr must list 1 to min(n_in, n_out) positive values, got {snr}")
        if cfg["noise"] <= 0:
            raise ValueError(f"noise must be > 0 (it sets the scale of the teacher), got {cfg['noise']}")
        gen = seeding.generator(seed, "data")
        rank, sigma = len(snr), float(cfg["noise"])
        left = torch.linalg.qr(torch.randn(n_out, rank, generator=gen))[0]  # U (n_out, r)
        right = torch.linalg.qr(torch.randn(n_in, rank, generator=gen))[0]  # V (n_in, r)
        teacher = sigma * left @ torch.diag(torch.tensor(snr)) @ right.T  # Ȳ (n_out, n_in)
        # Noise variance σ²/n_in (per example count), drawn once and fixed for the whole run.
        noise = sigma / math.sqrt(n_in) * torch.randn(n_out, n_in, generator=gen)
        targets = teacher + noise  # Y (n_out, n_in): column i is example i's target
        x = torch.eye(n_in)  # one-hot inputs, one example per column of Y
        return {"x": x, "y": targets.T, "targets": targets, "teacher": teacher}

    def reference_model(self, generator: torch.Generator) -> DeepLinear:
        cfg = self.config
        gen = generator
        w1 = cfg["init_scale"] * torch.randn(cfg["hidden"], cfg["n_in"], generator=gen)
        w2 = cfg["init_scale"] * torch.randn(cfg["n_out"], cfg["hidden"], generator=gen)
        return DeepLinear([w1, w2])

    def probe(self, data):
        x = data["x"][:4]  # (4, n_in)
        return x, (len(x), self.config["n_out"])

    def loss(self, model: DeepLinear, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # ½ summed squared error, as in Saxe et al. / Lampinen & Ganguli: τ = 1/lr in steps.
        return 0.5 * (model(batch["x"]) - batch["y"]).pow(2).sum()

    def observe(self, model: DeepLinear, data: dict[str, torch.Tensor]) -> dict[str, float]:
        product = model.product()  # W₂W₁ (n_out, n_in): with one-hot inputs, the predictions
        return {
            "train_error": generalization_error(product=product, teacher=data["targets"]),
            "test_error": generalization_error(product=product, teacher=data["teacher"]),
        }

    def summarize(self, steps, curves, data) -> dict[str, float]:
        train, test = curves["train_error"], curves["test_error"]
        best, best_step = early_stopping(steps=steps, test_error=test)
        out = {"min_test_error": best, "best_step": best_step, "final_test_error": float(test[-1]),
               "overfit_ratio": float(test[-1] / best)}
        out.update(gap_summary(train=train, test=test))
        out["steps_to_near_optimum"] = crossing_step(
            steps=steps, values=test, threshold=NEAR_OPTIMUM * self.optimum, rising=False)
        return out
