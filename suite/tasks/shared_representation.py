"""Learning a shared low-rank representation with first-order ANIL (Yüksel et al. 2023)."""

from __future__ import annotations

import math

import torch
from torch import nn

from suite import seeding
from suite.metrics.representation import complement_energy, effective_rank, subspace_distance
from suite.metrics.stage_timing import crossing_step
from suite.task import Curve, Metric, Plot, Task

# Floor of the final-value metrics: see SharedRepresentation's docstring.
RES_FINAL = 1e-5


class LinearRepresentation(nn.Module):
    """f(x) = xᵀ B w: a shared representation B (d, k′) and a head w (k′,)."""

    def __init__(self, B: torch.Tensor, w: torch.Tensor) -> None:
        super().__init__()
        self.B = nn.Parameter(B)
        self.w = nn.Parameter(w)


def adapted_heads(B: torch.Tensor, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  inner_lr: float) -> torch.Tensor:
    """Heads after one inner gradient step on ½·mean squared error, one per task.

    x: (T, m_in, d), y: (T, m_in) -> (T, k′). The inner gradient is detached: first-order ANIL
    does not differentiate through the inner step.
    """
    feats = x @ B  # (T, m_in, k′)
    resid = feats @ w - y  # (T, m_in)
    grad = torch.einsum("tmk,tm->tk", feats, resid) / x.shape[1]  # ∇_w ½ mean resid²
    return w - inner_lr * grad.detach()


def outer_loss(B: torch.Tensor, heads: torch.Tensor, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
    """½·mean squared error of each task's adapted head on its outer samples."""
    pred = torch.einsum("tmd,dk,tk->tm", x, B, heads)  # (T, m_out)
    return 0.5 * (pred - y).pow(2).mean()


class SharedRepresentation(Task):
    """Model interface: none, the task is optimizer-only. Its loss adapts the head in closed
    form on the representation matrix B itself (first-order ANIL), and every metric is a
    property of B's column space, so a model is this parametrisation (an architecture entry's
    runs are recorded as not applicable).

    Metric roles and resolutions.

    Ranked: `subspace_distance`, `complement_energy` and `adaptation_loss` all start high at a
    random B and fall only as the representation is learned, so an under-trained run loses
    them; `steps_to_recovery` is the target. Diagnostic: `effective_rank`, whose ideal value is
    k rather than an extreme; a B that collapses below rank k (a failure) would win a "lower is
    better" ranking, so it is shown, never ranked.

    Resolutions, measured by nudging every initial weight up by one ulp (torch.nextafter) and
    rerunning (smoke tier, seeds 0-1, Adam): the four final values moved by at most 1.9e-7
    (effective_rank; subspace_distance 1.2e-7) and `steps_to_recovery` by 5e-5 steps. Floors:
    1e-5 for the final values (50× the measured spread: the batches are fresh random tasks, so
    rounding differences are amplified by SGD noise for other optimizers) and 1 step.
    """

    name = "shared-representation"
    version = 1
    family = "representation-recovery"
    description = (
        "Multi-task linear regression y = ⟨w_t, B*ᵀx⟩ + ε with a shared k-dimensional "
        "representation B*, learned by first-order ANIL with an overparametrised width k′ > k: "
        "an inner step adapts the head per task on m_in samples, the entry's optimizer takes "
        "the outer step on fresh samples. B should recover span(B*) and unlearn the extra "
        "k′ − k directions (Yüksel, Boursier & Flammarion 2023)."
    )
    target = "steps_to_recovery"
    invalid_configs = ({"k": 0}, {"width": 1}, {"width": 100}, {"tasks_per_step": 0}, {"m_in": 0},
                       {"inner_lr": 0.0}, {"noise": -0.1}, {"init_scale": 0.0})
    tiers = {
        "smoke": dict(steps=500, evals=40, d=10, k=2, width=4, tasks_per_step=50, m_in=5,
                      m_out=10, inner_lr=0.5, noise=0.1, init_scale=0.3, eval_tasks=100),
        "standard": dict(steps=10000, evals=100, d=20, k=3, width=8, tasks_per_step=100, m_in=5,
                         m_out=20, inner_lr=0.5, noise=0.1, init_scale=0.3, eval_tasks=200),
    }

    def check_config(self) -> None:
        super().check_config()
        cfg = self.config
        for key in ("d", "k", "width", "tasks_per_step", "m_in", "m_out", "eval_tasks"):
            self.require_int(key)
        self.require("width", cfg["k"] <= cfg["width"] <= cfg["d"],
                     f"an integer between k = {cfg['k']} and d = {cfg['d']} (k <= width <= d)")
        self.require_number("inner_lr", 0.0, open_low=True)
        self.require_number("noise", 0.0)
        self.require_number("init_scale", 0.0, open_low=True)

    def metrics(self) -> dict[str, Metric]:
        unit = (0.0, 1.0)
        return {
            "subspace_distance": Metric("min", "sine of the largest principal angle between "
                                        "the top-k left singular subspace of B and span(B*)",
                                        role="ranked", resolution=RES_FINAL, bounds=unit),
            # B = 0 (a representation decayed away) has no direction: both are undefined there
            "complement_energy": Metric("min", "‖P_{B*⊥} B‖_F / ‖B‖_F (undefined for B = 0) "
                                        "at the end", role="ranked", resolution=RES_FINAL,
                                        bounds=unit, undefined_ok=True),
            "effective_rank": Metric("min", "entropy effective rank of B (k is ideal; undefined "
                                     "for B = 0)", role="diagnostic", resolution=RES_FINAL,
                                     bounds=(1.0, float(self.config["width"])), undefined_ok=True),
            "adaptation_loss": Metric("min", "outer loss on new tasks after one inner step",
                                      role="ranked", resolution=RES_FINAL, bounds=(0.0, math.inf)),
            "steps_to_recovery": Metric("min", "steps until the subspace distance is below 0.1",
                                        "steps", steps_to_target=True, role="ranked",
                                        resolution=1.0, bounds=(0.0, math.inf)),
        }

    def curves(self) -> dict[str, Curve]:
        return {name: Curve(self.metrics()[name].description.removesuffix(" at the end"),
                                  bounds=self.metrics()[name].bounds)
                for name in ("subspace_distance", "complement_energy", "effective_rank",
                             "adaptation_loss")}

    def plots(self) -> list[Plot]:
        return [Plot("lines", "subspace", "Subspace distance over training", "Distance between the "
                     "learned representation and the true subspace (mean over seeds), one line "
                     "per top entry.", ylabel="sin of largest angle", curves=("subspace_distance",),
                     logy=True)]

    def make_data(self, seed: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        if not cfg["k"] <= cfg["width"] <= cfg["d"]:
            raise ValueError("shared-representation needs k <= width <= d")
        gen = seeding.generator(seed, "data")
        truth = torch.linalg.qr(torch.randn(cfg["d"], cfg["k"], generator=gen))[0]  # B* (d, k)
        data = {"truth": truth}
        # A fixed set of held-out tasks to measure adaptation at every evaluation.
        data.update({f"eval_{k}": v for k, v in
                     self.sample_tasks(truth, cfg["eval_tasks"], gen).items()})
        return data

    def sample_tasks(self, truth: torch.Tensor, n: int,
                     gen: torch.Generator) -> dict[str, torch.Tensor]:
        """n fresh tasks, each with m_in inner and m_out outer samples."""
        cfg, dev = self.config, truth.device
        heads = torch.randn(n, cfg["k"], generator=gen, device=dev)  # w*_t (n, k)
        out = {}
        for part, m in (("in", cfg["m_in"]), ("out", cfg["m_out"])):
            x = torch.randn(n, m, cfg["d"], generator=gen, device=dev)  # (n, m, d)
            noise = cfg["noise"] * torch.randn(n, m, generator=gen, device=dev)
            out[f"x_{part}"] = x
            out[f"y_{part}"] = torch.einsum("nmd,dk,nk->nm", x, truth, heads) + noise
        return out

    def reference_model(self, generator: torch.Generator) -> LinearRepresentation:
        cfg = self.config
        gen = generator
        # B₀ entries N(0, init_scale²/d): columns of norm ≈ init_scale in a random direction;
        # the head starts at 0 so that early adaptation comes from the inner step alone.
        B = cfg["init_scale"] / cfg["d"] ** 0.5 * torch.randn(cfg["d"], cfg["width"], generator=gen)
        return LinearRepresentation(B, torch.zeros(cfg["width"]))

    def sample_batch(self, data, step, generator):
        return self.sample_tasks(data["truth"], self.config["tasks_per_step"], generator)

    def loss(self, model: LinearRepresentation, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        heads = adapted_heads(model.B, model.w, batch["x_in"], batch["y_in"],
                              self.config["inner_lr"])
        return outer_loss(model.B, heads, batch["x_out"], batch["y_out"])

    def observe(self, model: LinearRepresentation, data) -> dict[str, float]:
        held_out = {k.removeprefix("eval_"): v for k, v in data.items() if k.startswith("eval_")}
        return {
            "subspace_distance": subspace_distance(learned=model.B, truth=data["truth"]),
            "complement_energy": complement_energy(learned=model.B, truth=data["truth"]),
            "effective_rank": effective_rank(matrix=model.B),
            "adaptation_loss": float(self.loss(model, held_out)),
        }

    def summarize(self, steps, curves, data) -> dict[str, float]:
        out = {name: float(curves[name][-1]) for name in
               ("subspace_distance", "complement_energy", "effective_rank", "adaptation_loss")}
        out["steps_to_recovery"] = crossing_step(
            steps=steps, values=curves["subspace_distance"], threshold=0.1, rising=False)
        return out
