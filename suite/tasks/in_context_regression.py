"""In-context linear regression with one layer of multi-head softmax attention (He et al. 2025).

Prompts (x_1, y_1, …, x_n, y_n, x_q), x ~ N(0, I_d), w ~ N(0, I_d/d) fresh per prompt,
y = ⟨w, x⟩ + ε with ε ~ N(0, σ²); the model predicts y_q and is trained on the squared error
with fresh prompts every step. Trained from a small random initialisation, the loss sits on the
trivial plateau E[y_q²] = 1 + σ², then the heads develop a diagonal, homogeneous KQ pattern and a
label-only, zero-sum OV pattern: together a debiased gradient-descent step ŷ ∝ x_qᵀ Σ_i y_i x_i / n,
within a factor of the Bayes-optimal (ridge) loss, which softmax's normalisation carries over to
prompts longer than those trained on (linear attention, `attention="linear"`, does not).

Model interface (what an architecture entry's model must meet)
    forward(tokens) -> predictions. tokens: float (B, L, d + 1), rows (x_i, y_i) for the
    L − 1 context pairs and (x_q, 0) last; predictions: float (B,), the estimate of y_q. Any L ≥ 2
    (length generalisation evaluates L − 1 = n, 2n, 4n). The loss metrics apply to every such model.
    patterns() -> (kq (H, d + 1, d + 1), ov (H, d + 1)): the merged key-query matrices and the
    value-output vectors of `AttentionRegressor`. A model without this method gets NaN (not
    applicable) for the four pattern scores.

Exact references (suite.metrics.in_context): trivial loss L₀ = dτ² + σ² = 1 + σ²; Bayes loss
L*(n) = σ² + σ² E tr((XᵀX + λI)⁻¹), λ = σ²/τ² = dσ², the Wishart expectation computed by de
Bruijn's identity and quadrature (no sampling); one gradient step from 0 with the best step size,
L_GD(n) = 1 + σ² − τ²d·γ*, γ* = n / (n + d + 1 + dσ²) (closed form).

Metrics (L(m): the loss on the seed's fixed held-out prompts with m context pairs)
    excess_loss, excess_loss_2x, excess_loss_4x: L(m) − L*(m) at the last step for m = n, 2n, 4n,
        estimated on the seed's fixed held-out prompts (eval_prompts per length) as the mean of
        (ŷ − y)² − (ŷ_ridge − y)², paired with the Bayes predictor on the same prompts: unbiased
        for L − L*, with a sampling error that shrinks as the model approaches the optimum
        (≈ 0.005 at the standard tier's end state). Ranked: lower is better for any predictor,
        and the held-out prompts are the same for every entry at a seed. Resolution 1e-4: above
        the float32 differences between batched and one-by-one runs (0 on the smoke tier), below
        any difference that matters.
    plateau_exit_step: first step (interpolated between evaluations) with
        L(n) ≤ L̂₀ − 0.1 (L₀ − L*(n)), L̂₀ the held-out prompts' own mean y_q² (the plateau of a
        model that outputs ≈ 0; the exact L₀ would let their sampling error cross the threshold
        at step 0). Ranked: leaving the plateau sooner is faster learning.
    steps_to_near_optimal (target): first step with L(n) ≤ 2 L*(n) (paired excess ≤ L*(n)).
        Ranked. The factor 2 sits in the steep descent between L₀ and the end state ≈ 1.6 L*
        (L_GD = 1.57 L* at the standard tier); ×1.75 lies so close to the end state that its
        step varied from ≈ 300 to never within a seed-to-seed spread (565 ± 470 over 5 seeds).
        Resolution 1 step for both: evaluations are log-spaced, the interpolation is deterministic.
    kq_diagonal = Σ_h ‖diag A_h‖² / Σ_h ‖A_h‖²_F, A_h the x-to-x block (d, d) of head h's KQ;
    kq_homogeneous = Σ_h d (tr A_h / d)² / Σ_h ‖diag A_h‖²;
    ov_last_entry = Σ_h v_{h,y}² / Σ_h ‖v_h‖²;  ov_zero_sum = 1 − |Σ_h v_{h,y}| / Σ_h |v_{h,y}|.
        All in [0, 1], 1 the pattern He et al. describe. Diagnostic: they describe the mechanism,
        not its quality (an entry may reach a lower loss another way, and other architectures
        have no such weights). Resolution 1e-4 (ratios of float32 sums of O(1) terms).

Tiers. Smoke: d = 4, n = 12, 300 steps (seconds). Standard: d = 5, n = 20, σ = 0.5, H = 4,
batch 256, 1500 steps, chosen by a sweep with the AdamW baseline's own table (lr 1e-3, weight
decay 0.01), 5 seeds batched, one thread of the shared 2-core machine (mean ± sd over seeds):
    init 0.01 (chosen): exit 97 ± 6 steps, ×2 at 283 ± 15, excess 0.211 / 0.105 (n / 4n),
        ov_zero_sum 0.96; 26.5 s of CPU for the 5 seeds.
    init 0.001: exit 104 ± 4, but 1+ seeds never reach ×2 in 1500 steps: the heads take longer
        to break their symmetry (ov_zero_sum 0.38 ± 0.47).
    init 0.1: exit 79 ± 31 (the plateau is barely there), ×2 at 345 ± 50.
    lr 3e-3: exit 38 ± 3, ×2 at 104 ± 5, the same end state (excess 0.209 / 0.103); lr 3e-4:
        exit 290 ± 12, ×2 at 914 ± 70, excess 0.229 / 0.127. The baseline's own 1e-3 shows the
        plateau and reaches the end state well within 1500 steps: no task-specific table.
    3000 steps (eval 8192 prompts): excess 0.208 / 0.097, ov_zero_sum 0.989; the loss has
        settled by ≈ 1000 steps, the zero-sum pattern keeps sharpening slowly.
    attention="linear", 1500 steps: excess 0.195 / 0.582 / 4.45 at n / 2n / 4n (softmax:
        0.21 / 0.15 / 0.10): linear attention fits the training length as well and fails on
        longer prompts, as He et al. report.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import nn

from suite import seeding
from suite.metrics.in_context import (
    bayes_loss,
    kq_diagonal,
    kq_homogeneous,
    ov_last_entry,
    ov_zero_sum,
    trivial_loss,
)
from suite.metrics.stage_timing import crossing_step
from suite.task import ConfigError, Curve, Metric, ModelInterface, Plot, Task

NEAR_OPTIMAL = 2.0  # target: loss within this factor of the Bayes-optimal loss (see the docstring)
PLATEAU_EXIT = 0.1  # leaving the plateau: a tenth of the way from the trivial to the Bayes loss
LENGTHS = (1, 2, 4)  # evaluation context lengths, in multiples of the training length n
PATTERNS = {"kq_diagonal": kq_diagonal, "kq_homogeneous": kq_homogeneous}
OV_PATTERNS = {"ov_last_entry": ov_last_entry, "ov_zero_sum": ov_zero_sum}


class AttentionRegressor(nn.Module):
    """One attention layer, H heads, merged weights: ŷ = Σ_h Σ_i a_{h,i} ⟨v_h, z_i⟩.

    kq: (H, d+1, d+1) merged key-query matrices; ov: (H, d+1) value-output vectors (the row
    of W_O W_V that writes the prediction). Softmax: a_{h,i} = softmax_i(z_iᵀ KQ_h z_q). Linear:
    a_{h,i} = z_iᵀ KQ_h z_q / n_train, a fixed normaliser, so its sum grows with the length.
    """

    def __init__(self, kq: torch.Tensor, ov: torch.Tensor, attention: str, context: int) -> None:
        super().__init__()
        self.kq = nn.Parameter(kq)
        self.ov = nn.Parameter(ov)
        self.attention = attention
        self.train_context = context  # a Python int, not a tensor: no state outside parameters

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        context, query = tokens[..., :-1, :], tokens[..., -1, :]  # (B, n, d+1), (B, d+1)
        keys = torch.einsum("hef,bf->bhe", self.kq, query)  # KQ_h z_q, (B, H, d+1)
        scores = keys @ context.transpose(-1, -2)  # z_iᵀ KQ_h z_q, (B, H, n)
        if self.attention == "softmax":
            weights = torch.softmax(scores, dim=-1)
        else:
            weights = scores / self.train_context
        values = context @ self.ov.T  # ⟨v_h, z_i⟩, (B, n, H)
        return torch.einsum("bhi,bih->b", weights, values)  # (B,)

    def patterns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kq (H, d+1, d+1), ov (H, d+1)): what the pattern scores read."""
        return self.kq, self.ov


def sample_prompts(*, count: int, context: int, dim: int, noise: float,
                   generator: torch.Generator, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """count prompts with `context` pairs: tokens (count, context + 1, dim + 1), target (count,)."""
    x = torch.randn(count, context + 1, dim, generator=generator, device=device)  # last row: x_q
    w = torch.randn(count, dim, generator=generator, device=device) / math.sqrt(dim)  # τ² = 1/d
    y = torch.einsum("bld,bd->bl", x, w) + noise * torch.randn(
        count, context + 1, generator=generator, device=device)  # (count, context + 1)
    labels = torch.cat([y[:, :-1], torch.zeros_like(y[:, -1:])], dim=1)  # the query's y slot is 0
    return {"tokens": torch.cat([x, labels[..., None]], dim=-1), "target": y[:, -1]}


def ridge_predictions(*, tokens: torch.Tensor, noise: float) -> torch.Tensor:
    """The Bayes-optimal prediction x_qᵀ(XᵀX + λI)⁻¹Xᵀy, λ = σ²/τ² = dσ², of each prompt.

    tokens: (B, n + 1, d + 1) -> (B,). Computed in float64 once per held-out set.
    """
    tokens = tokens.double()
    x, y, query = tokens[:, :-1, :-1], tokens[:, :-1, -1], tokens[:, -1, :-1]
    dim = x.shape[-1]
    gram = x.transpose(1, 2) @ x + noise**2 * dim * torch.eye(dim, dtype=x.dtype)  # (B, d, d)
    w_hat = torch.linalg.solve(gram, x.transpose(1, 2) @ y[..., None])[..., 0]  # (B, d)
    return (query * w_hat).sum(-1).float()


@cache
def references(context: int, dim: int, noise: float) -> tuple[float, float]:
    """(trivial loss, Bayes loss) at context length `context`; τ² = 1/d."""
    prior_var, noise_var = 1.0 / dim, noise**2
    return (trivial_loss(dim=dim, prior_var=prior_var, noise_var=noise_var),
            bayes_loss(context=context, dim=dim, prior_var=prior_var, noise_var=noise_var))


class InContextRegression(Task):
    name = "in-context-regression"
    version = 1
    family = "stage-timing"
    description = (
        "In-context linear regression: prompts (x_1, y_1, …, x_n, y_n, x_q) with a fresh weight "
        "vector per prompt, predicted by one layer of multi-head softmax attention trained on "
        "fresh prompts. The loss leaves the trivial plateau as the heads form a diagonal key-query "
        "and a label-only, zero-sum output pattern (a debiased gradient-descent step), ends within "
        "a factor of the exact Bayes-optimal ridge loss, and generalises to 2x and 4x longer "
        "prompts (He et al. 2025)."
    )
    target = "steps_to_near_optimal"
    interface = ModelInterface(
        inputs="float (B, L, d + 1): rows (x_i, y_i) of the L - 1 context pairs, then (x_q, 0); "
               "L varies: n + 1 in training, n + 1, 2n + 1 and 4n + 1 at evaluation",
        outputs="float (B,): the prediction of y_q",
        optimizer=("adamw", (("lr", 1e-3), ("weight_decay", 0.01))),
        optional=(("patterns", (*PATTERNS, *OV_PATTERNS)),))
    tiers = {
        "smoke": dict(steps=300, evals=30, dim=4, context=12, heads=4, noise=0.5, batch=128,
                      init_scale=0.01, eval_prompts=1024, attention="softmax"),
        "standard": dict(steps=1500, evals=60, dim=5, context=20, heads=4, noise=0.5, batch=256,
                         init_scale=0.01, eval_prompts=4096, attention="softmax"),
    }

    invalid_configs = ({"dim": 0}, {"context": 0}, {"heads": 0}, {"noise": 0.0},
                       {"attention": "cosine"}, {"batch": 0})
    quick_config = {"steps": 20, "evals": 5, "eval_prompts": 64}

    def check_config(self) -> None:
        super().check_config()
        cfg = self.config
        for key in ("dim", "context", "heads", "batch", "eval_prompts"):
            if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
                raise ConfigError(f"{self.name}: config {key}={cfg[key]!r} must be an integer >= 1")
        for key in ("noise", "init_scale"):
            if not (isinstance(cfg[key], (int, float)) and 0 < cfg[key] < math.inf):
                raise ConfigError(f"{self.name}: config {key}={cfg[key]!r} must be a number > 0 "
                                  "(noise > 0 keeps the Bayes reference finite)")
        if cfg["attention"] not in ("softmax", "linear"):
            raise ConfigError(f"{self.name}: config attention={cfg['attention']!r} must be "
                              "'softmax' or 'linear'")
        try:  # the exact references must exist at every evaluated length
            for n in self.lengths().values():
                references(n, cfg["dim"], float(cfg["noise"]))
        except ValueError as err:
            raise ConfigError(f"{self.name}: config dim={cfg['dim']}, context={cfg['context']}: "
                              f"{err}") from None

    def lengths(self) -> dict[str, int]:
        """Curve suffix -> context length of the held-out prompts."""
        return {("" if k == 1 else f"_{k}x"): k * self.config["context"] for k in LENGTHS}

    def metrics(self) -> dict[str, Metric]:
        steps = dict(unit="steps", steps_to_target=True, role="ranked", resolution=1.0,
                     bounds=(0.0, math.inf))  # a step count: its interval is clipped at 0
        pattern = dict(role="diagnostic", resolution=1e-4, bounds=(0.0, 1.0))
        out = {f"excess_loss{s}": Metric("min", f"final loss on held-out prompts with {n} context "
                                         "pairs minus the exact Bayes-optimal loss", role="ranked",
                                         resolution=1e-4) for s, n in self.lengths().items()}
        out["plateau_exit_step"] = Metric(
            "min", f"step the loss falls {PLATEAU_EXIT:.0%} of the way from the trivial plateau to "
            "the Bayes loss", **steps)
        out["steps_to_near_optimal"] = Metric(
            "min", f"steps until the loss is within x{NEAR_OPTIMAL} of the Bayes loss", **steps)
        out["kq_diagonal"] = Metric("max", "share of the KQ x-blocks' energy on the diagonal", **pattern)
        out["kq_homogeneous"] = Metric("max", "share of the KQ diagonals' energy in their mean",
                                       **pattern)
        out["ov_last_entry"] = Metric("max", "share of the OV vectors' energy on the label entry",
                                      **pattern)
        out["ov_zero_sum"] = Metric("max", "1 - |sum of the heads' label weights| / sum of their "
                                    "absolute values", **pattern)
        return out

    def plots(self) -> list[Plot]:
        lengths = tuple(f"{k}n context pairs" if k > 1 else "n context pairs" for k in LENGTHS)
        return [Plot("panels", "excess", "Excess loss over Bayes-optimal", "Held-out loss minus the "
                     "Bayes-optimal predictor's, at the training length n and at 2n and 4n (length "
                     "generalisation), over training (means over seeds).", ylabel="excess loss",
                     curves=tuple(f"excess{s}" for s in self.lengths()), labels=lengths),
                Plot("panels", "patterns", "Attention pattern scores", "The four pattern scores "
                     "of the merged key-query and value-output weights over training (means over "
                     "seeds); models without patterns() have none.", ylabel="score",
                     curves=("kq_diagonal", "kq_homogeneous", "ov_last_entry", "ov_zero_sum"),
                     labels=("KQ diagonal", "KQ homogeneous", "OV label entry", "OV zero sum"))]

    def curves(self) -> dict[str, Curve]:
        out = {f"loss{s}": Curve(f"squared error on held-out prompts with {n} context pairs",
                                   bounds=(0.0, math.inf))
               for s, n in self.lengths().items()}
        out |= {f"excess{s}": Curve(f"loss minus the Bayes predictor's loss on the same prompts "
                                    f"with {n} context pairs") for s, n in self.lengths().items()}
        out |= {name: Curve(name.replace("_", " ") + " pattern score (NaN: the model has no "
                            "patterns())") for name in (*PATTERNS, *OV_PATTERNS)}
        return out

    def make_data(self, seed: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        gen = seeding.generator(seed, "data")
        data = {}
        for suffix, n in self.lengths().items():  # fixed held-out prompts, one set per length
            prompts = sample_prompts(count=cfg["eval_prompts"], context=n, dim=cfg["dim"],
                                     noise=cfg["noise"], generator=gen)
            prompts["ridge"] = ridge_predictions(tokens=prompts["tokens"], noise=cfg["noise"])
            data |= {f"{k}{suffix}": v for k, v in prompts.items()}
        return data

    def reference_model(self, generator: torch.Generator) -> AttentionRegressor:
        cfg = self.config
        gen = generator
        e, h = cfg["dim"] + 1, cfg["heads"]
        kq = cfg["init_scale"] * torch.randn(h, e, e, generator=gen)
        ov = cfg["init_scale"] * torch.randn(h, e, generator=gen)
        return AttentionRegressor(kq, ov, cfg["attention"], cfg["context"])

    def sample_batch(self, data, step, generator):
        cfg = self.config
        return sample_prompts(count=cfg["batch"], context=cfg["context"], dim=cfg["dim"],
                              noise=cfg["noise"], generator=generator, device=generator.device)

    def probe(self, data):
        # The longest held-out prompts (4n pairs): a model sized to the training length (a
        # positional table of n + 1 rows) fails here, at its first forward, not at evaluation.
        longest = max(self.lengths().items(), key=lambda kv: kv[1])[0]
        x = data[f"tokens{longest}"][:4]  # (4, 4n + 1, d + 1)
        return x, (len(x),)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Mean squared error without ½, so that it is directly comparable with the references.
        return (model(batch["tokens"]) - batch["target"]).pow(2).mean()

    def observe(self, model: nn.Module, data: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for suffix in self.lengths():
            batch = {"tokens": data[f"tokens{suffix}"], "target": data[f"target{suffix}"]}
            errors = (model(batch["tokens"]) - batch["target"]).double().pow(2)  # (B,)
            bayes = (data[f"ridge{suffix}"] - batch["target"]).double().pow(2)
            out[f"loss{suffix}"] = float(errors.mean())
            # Paired with the Bayes predictor on the same prompts: an unbiased estimate of
            # L − L* whose sampling error shrinks as the model approaches the optimum.
            out[f"excess{suffix}"] = float((errors - bayes).mean())
        if callable(getattr(model, "patterns", None)):
            kq, ov = model.patterns()
            out |= {name: fn(kq=kq) for name, fn in PATTERNS.items()}
            out |= {name: fn(ov=ov) for name, fn in OV_PATTERNS.items()}
        else:
            out |= {name: math.nan for name in (*PATTERNS, *OV_PATTERNS)}
        return out

    def summarize(self, steps, curves, data) -> dict[str, float]:
        cfg = self.config
        out = {f"excess_loss{s}": float(curves[f"excess{s}"][-1]) for s in self.lengths()}
        trivial, bayes = references(cfg["context"], cfg["dim"], float(cfg["noise"]))
        # The plateau is the trivial loss on the same held-out prompts (mean y_q²), so that their
        # sampling error cannot put step 0 below the exit threshold.
        plateau = float(data["target"].double().pow(2).mean())
        out["plateau_exit_step"] = crossing_step(
            steps=steps, values=curves["loss"], threshold=plateau - PLATEAU_EXIT * (trivial - bayes),
            rising=False)
        out["steps_to_near_optimal"] = crossing_step(
            steps=steps, values=curves["excess"], threshold=(NEAR_OPTIMAL - 1) * bayes, rising=False)
        out |= {name: float(curves[name][-1]) for name in (*PATTERNS, *OV_PATTERNS)}
        return out
