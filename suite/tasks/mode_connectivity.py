"""Linear mode connectivity of a small MLP: spawning (Frankle et al. 2020), Git Re-Basin and LLFC.

Model interface (architecture entries): `forward(x)` float (N, d) → (N, C) logits. Spawn and
independent barriers apply to any such model: θ(α) interpolates every floating parameter and
buffer by name (`metrics.connectivity.state_path_curve`), where the two networks' buffers are
equal (constants: rotary frequencies). A model whose buffers training changes (BatchNorm running
statistics, spectral_norm's vectors) gets `test_error` alone: interpolating such state is not
interpolating the network, and recomputing it along the path is not built (`STATE`). Only exact
[Linear, ReLU] layers count as the reference layout: a subclass with its own forward (muP's
MuReadout), a parametrized layer or a hook computes another function than the plain MLP.
Weight matching and LLFC permute hidden units and read hidden features, so they need the
reference layout, an `nn.Sequential` of [Linear, ReLU] × depth, Linear with the config's depth
(any widths); for other models those metrics are not applicable (a general permutation spec, as
in Git Re-Basin, is not built).
Reference optimizer: SGD lr 0.07, momentum 0.9 (the momentum baseline's table).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from suite import seeding
from suite.batched import train_lanes
from suite.loop import Lane, Trainer, Trajectory, copy_training_state, set_mode
from suite.metrics.connectivity import (
    barrier,
    interpolate,
    llfc_distance,
    mlp_forward,
    params_from_sequential,
    path_curve,
    permute_params,
    state_path_curve,
    weight_matching,
)
from suite.task import Curve, Metric, ModelInterface, Plot, Task

LLFC_ALPHA = 0.5
# Floors of the loss barriers (nats) and LLFC distances: see ModeConnectivity's docstring.
RES_LOSS = 1e-6
RES_LLFC = 1e-6
RANGE = {"loss": (0.0, math.inf), "error": (0.0, 1.0)}  # valid values of a loss and an error curve


# What the barriers and LLFC cannot measure for some models (ModelInterface.unsupported).
LAYOUT = ("weight matching and LLFC permute and read the hidden units of the reference layout "
          "([Linear, ReLU] × depth, Linear), which this model does not have")
LAYOUT_METRICS = ("*_barrier/matched", "llfc/layer_*", "llfc_baseline/layer_*")
STATE = ("training changed floating-point buffers of the model, differently in the two "
         "networks (BatchNorm running statistics, spectral_norm's power-iteration vectors): "
         "interpolating them is not interpolating the network (a spectral-normalised layer's "
         "norm rose to 1.6 midway), and recomputing them along the path is not built (constant "
         "buffers, e.g. rotary frequencies, are fine)")
STATE_METRICS = ("*_barrier/spawn_*", "*_barrier/independent", "stable_spawn_step")


def moved_buffers(a: Weights, b: Weights) -> list[str]:
    """The floating-point buffers of two networks' states that differ (what interpolating the
    states by name would interpolate beyond the parameters; equal ones interpolate to
    themselves)."""
    params = {name for name, _ in a.model.named_parameters()}
    return [name for name, value in a.state.items() if name not in params and value.is_floating_point()
            and not torch.equal(value, b.state[name])]


def path_name(pair: str, kind: str, alpha: float) -> str:
    """Curve name of one point of a linear path: `path/{pair}/{loss|error}@{alpha:.4f}`."""
    return f"path/{pair}/{kind}@{alpha:.4f}"


def clone_params(model: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed snapshot of an MLP's (weight, bias) pairs, safe from further training."""
    return [(w.clone(), b.clone()) for w, b in params_from_sequential(model=model)]


@dataclass
class Weights:
    """A trained network's weights, fixed: the MLP's (weight, bias) pairs when it has the
    reference layout (weight matching and LLFC read them), else its whole state by name."""

    model: nn.Module
    mlp: list[tuple[torch.Tensor, torch.Tensor]] | None
    state: dict[str, torch.Tensor]


def snapshot(model: nn.Module, depth: int) -> Weights:
    try:
        mlp = clone_params(model)
    except (TypeError, ValueError):
        mlp = None
    if mlp is not None and len(mlp) != depth + 1:
        mlp = None  # another depth: LLFC's layers would not line up with the config's
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Weights(model, mlp, state)


def record_final(traj: Trajectory, values: dict[str, float]) -> None:
    """Add curves that exist only at the last recorded step, padded with NaN before it.

    The run's curves must stay aligned with `traj.steps`; path and LLFC values are measured
    once, after training, so the earlier evaluation steps have no value for them.
    """
    earlier = len(traj.steps) - 1
    for name, value in values.items():
        traj.curves[name] = [math.nan] * earlier + [float(value)]


@dataclass
class Network:
    """One network of a seed's run: parent, a spawned child, or an independent one."""

    seed: int
    network: str  # its name, which also names its global-RNG state
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    traj: Trajectory
    stream: torch.Generator  # its batches' random stream, which it keeps from segment to segment
    run: int  # which run of the batch it belongs to (index into run_seeds' seeds)
    owner: Trainer | None  # that run's trainer when runs have their own entries (Lane.owner)


@dataclass
class SeedRun:
    """What one seed's run collects across its networks."""

    data: dict[str, torch.Tensor]
    final: dict[str, float] = field(default_factory=dict)  # path and LLFC values
    done: int = 0  # optimizer steps over every network of the run
    failed: Trajectory | None = None  # the first network that diverged
    traj: Trajectory | None = None  # independent network A's: the run's curves

    def trajectory(self, steps: int) -> Trajectory:
        if self.failed is not None:
            return Trajectory(status="diverged", diverged_step=self.failed.diverged_step,
                              steps_done=self.done, data=self.data)
        if not self.traj.steps or self.traj.steps[-1] != steps:
            raise RuntimeError(f"the reference network's last evaluation is not step {steps}")
        record_final(self.traj, self.final)
        self.traj.steps_done, self.traj.data = self.done, self.data
        return self.traj


class ModeConnectivity(Task):
    """Metric roles and resolutions.

    Ranked: the barriers between spawned children and after weight matching (how early
    training becomes linearly stable, and how connected the optimizer's solutions are up to
    permutation), `stable_spawn_step` (the target), the LLFC distances and `test_error`.
    Networks that do not train at all are trivially connected (every barrier near 0), so a
    spawn step counts towards the target only if both its children learned: their final test
    errors are at most the tier's `trained_error` (version 2; version 1 counted any spawn step,
    and L-BFGS children stuck at 0.12-0.75 error, chance being 0.75, reached the target at step
    0). `test_error`, which such a run loses, is also ranked beside the barriers. For the same
    reason every measurement between two networks (a pair's loss and error barriers, the
    matched pair's LLFC distances) is undefined (NaN, "no result" in the tables, so it ranks
    after every entry that has one) in a seed where either network ends above `trained_error`
    (version 3; under version 2 the L-BFGS baseline, whose networks end at 0.16-0.46 test
    error, had spawn barriers of 0 to 0.08 and ranked first on most of them; version 3 also
    takes the final weights with the optimizer in eval mode, as network A's curves are: a
    schedule-free optimizer's paths were measured on its train-mode weights). Diagnostic:
    `llfc_baseline/*` are the reference distances the LLFC values are read against, and the
    barriers between independent networks before matching are the reference the matched
    barriers are read against (both shown, never ranked).

    Resolutions: error barriers and `test_error` are fractions of the n_test test points, so
    one point, 1/n_test, is the floor (1/2048 on the standard tier); spawn steps are integers
    (floor 1 step). Loss barriers and LLFC distances, measured by nudging every initial weight
    up by one ulp (torch.nextafter) and rerunning (smoke tier shortened to 100 steps with spawn
    steps 0, 25, 100; seed 0; Adam): loss barriers moved by at most 1.7e-8, LLFC distances by
    5.7e-8, error barriers and test_error not at all. Floors: 1e-6 for both (20-60× the
    spread: minibatch noise amplifies rounding differences for other optimizers).
    """

    name = "mode-connectivity"
    # 4: the smoke tier spawns at steps 0, 25 and 100, not 300 (= its steps: two children with no
    # step to take, whose barriers were 0 by construction yet ranked, and whose "stable" spawn
    # step capped the target at 300 for entries that never become stable). The standard tier's
    # numbers are those of version 3.
    version = 4
    family = "linear-connectivity"
    description = (
        "A ReLU MLP classifies a Gaussian mixture whose clusters carry random labels, trained "
        "with minibatch noise. Spawning: a parent is trained for k steps, copied with its "
        "optimizer state into two children that finish training on different data orders; the "
        "loss and error barriers along the straight line between the children measure how "
        "early training becomes linearly stable (Frankle et al. 2020). Two independently "
        "initialised networks are compared before and after aligning their hidden units by "
        "weight matching (Ainsworth et al. 2023), and the features of the interpolated network "
        "against the interpolated features (LLFC, Zhou et al. 2023)."
    )
    target = "stable_spawn_step"
    # Spawn steps are a short list, so many tuning trials tie on the target (often at step 0):
    # among them the tuner takes the best-trained networks, not the earliest design point.
    tie_break = "test_error"
    interface = ModelInterface(
        inputs="float (N, d): inputs", outputs="float (N, C): class logits",
        optimizer=("sgd", (("lr", 0.07), ("momentum", 0.9))),
        unsupported=((LAYOUT, LAYOUT_METRICS), (STATE, STATE_METRICS)))
    tiers = {
        "smoke": dict(steps=300, evals=12, dim=8, clusters=32, classes=4, cluster_std=0.3,
                      n_train=512, n_test=512, width=32, depth=2, batch_size=32,
                      spawn_steps=[0, 25, 100], alphas=11, barrier_threshold=0.02,
                      trained_error=0.5),
        # 256 random-label clusters in 16 dimensions with 8 training points each: the network
        # must carve many small regions, and which hidden unit takes which cluster is decided
        # by early minibatch noise, so children spawned at step 0 end in different basins.
        # trained_error: every baseline's children end at 0.006-0.08 test error, and children
        # above 0.1 (5-10x that) have not learned the clusters. On the smoke tier's 300 steps
        # the baselines' children end at 0.03-0.69, so only "better than chance" (0.75) is asked.
        "standard": dict(steps=2000, evals=30, dim=16, clusters=256, classes=4, cluster_std=0.3,
                         n_train=2048, n_test=2048, width=128, depth=2, batch_size=32,
                         spawn_steps=[0, 5, 10, 25, 100, 500], alphas=21,
                         barrier_threshold=0.02, trained_error=0.1),
    }

    invalid_configs = ({"spawn_steps": [0, 100000]}, {"spawn_steps": []}, {"alphas": 2},
                       {"depth": 0}, {"width": 0}, {"classes": 1000}, {"batch_size": 0},
                       {"cluster_std": -1.0}, {"barrier_threshold": 0.0},
                       {"trained_error": 0.0})
    quick_config = {"steps": 20, "evals": 5, "spawn_steps": [0, 10]}

    # -- configuration ------------------------------------------------------------------------
    @property
    def spawn_steps(self) -> list[int]:
        return sorted({int(k) for k in self.config["spawn_steps"]})

    @property
    def alpha_grid(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.config["alphas"])

    @property
    def pairs(self) -> list[str]:
        return [f"spawn_{k}" for k in self.spawn_steps] + ["independent", "matched"]

    @property
    def llfc_layers(self) -> list[int]:
        # Layer 0's pre-activations x W₀ᵀ + b₀ are linear in the weights, so their LLFC distance
        # is exactly 0 (tested in the metric tests): report the later hidden layers and logits.
        return list(range(1, self.config["depth"] + 1))

    def check_config(self) -> None:
        super().check_config()
        cfg = self.config
        for key in ("dim", "clusters", "n_train", "n_test", "width", "depth", "batch_size"):
            self.require_int(key)
        self.require_int("classes", low=2, high=cfg["clusters"])
        self.require_number("cluster_std", 0.0)
        spawn = cfg["spawn_steps"]
        self.require("spawn_steps", isinstance(spawn, list) and len(spawn) > 0 and all(
            isinstance(k, int) and 0 <= k <= cfg["steps"] for k in spawn),
            f"a non-empty list of integer spawn steps in [0, steps={cfg['steps']}]")
        self.require_int("alphas", low=3)  # both ends of the path and one point inside
        self.require_number("barrier_threshold", 0.0, 1.0, open_low=True)
        self.require_number("trained_error", 0.0, 1.0, open_low=True)

    # -- the contract -------------------------------------------------------------------------
    def metrics(self) -> dict[str, Metric]:
        out = {}
        one_point = 1.0 / self.config["n_test"]
        untrained = (f"; undefined (no result) in a seed where either network ends above "
                     f"{self.config['trained_error']:g} test error")
        for pair in self.pairs:
            if pair.startswith("spawn_"):
                what = f"two children spawned at step {pair.removeprefix('spawn_')}"
            elif pair == "independent":
                what = "two independently initialised networks"
            else:
                what = "two independent networks after weight matching"
            role = "diagnostic" if pair == "independent" else "ranked"
            out[f"loss_barrier/{pair}"] = Metric(
                "min", f"max over α of test loss above the chord, between {what}{untrained}",
                "nats", role=role, resolution=RES_LOSS, bounds=(0.0, math.inf), undefined_ok=True)
            out[f"error_barrier/{pair}"] = Metric(
                "min", f"max over α of test error above the chord, between {what}{untrained}",
                "fraction", role=role, resolution=one_point, bounds=(0.0, 1.0), undefined_ok=True)
        for l in self.llfc_layers:
            where = "the logits" if l == self.config["depth"] else f"hidden layer {l}'s pre-activations"
            out[f"llfc/layer_{l}"] = Metric(
                "min", f"1 − cos(F_α, (F_A + F_B)/2) of {where} at α = 0.5, matched pair, "
                f"averaged over test samples (LLFC holds when ≪ llfc_baseline){untrained}",
                role="ranked", resolution=RES_LLFC, bounds=(0.0, 2.0), undefined_ok=True)
            out[f"llfc_baseline/layer_{l}"] = Metric(
                "min", f"1 − cos(F_A, F_B) of {where}, matched pair, averaged over test "
                f"samples: the distance llfc/layer_{l} is compared with{untrained}",
                role="diagnostic", resolution=RES_LLFC, bounds=(0.0, 2.0), undefined_ok=True)
        out["test_error"] = Metric("min", "mean final test error of the two independent networks",
                                   "fraction", role="ranked", resolution=one_point, bounds=(0.0, 1.0))
        out["stable_spawn_step"] = Metric(
            "min", f"smallest spawn step whose error barrier is below "
            f"{self.config['barrier_threshold']:g} (linear stability, Frankle et al. 2020) and "
            f"whose two children both end at test error ≤ {self.config['trained_error']:g}",
            "steps", steps_to_target=True, role="ranked", resolution=1.0, bounds=(0.0, math.inf))
        return out

    def curves(self) -> dict[str, Curve]:
        out = {f"{part}_{kind}": Curve(f"{part} {what} of independent network A", bounds=RANGE[kind])
               for part in ("train", "test") for kind, what in (("loss", "cross-entropy"),
                                                                ("error", "error"))}
        for pair in self.pairs:
            for kind in ("loss", "error"):
                out.update({path_name(pair, kind, a): Curve(f"test {kind} at α = {a:.4f} between "
                                                            f"the {pair} pair", at_end=True,
                                                            bounds=RANGE[kind])
                            for a in self.alpha_grid})
        for l in self.llfc_layers:
            for name in (f"llfc/layer_{l}", f"llfc_baseline/layer_{l}"):
                out[name] = Curve(f"{name} after training", at_end=True)
        return out

    def plots(self) -> list[Plot]:
        labels = {"independent": "independent (before matching)", "matched": "after matching"}
        order = ["independent", "matched"] + [f"spawn_{k}" for k in self.spawn_steps]
        paths = tuple((labels.get(pair, f"spawned at step {pair.removeprefix('spawn_')}"),
                       tuple(path_name(pair, "error", a) for a in self.alpha_grid))
                      for pair in order)
        errors = Plot("panels", "errors", "Train and test error", "Train (dashed) and test (solid) "
                      "error of independent network A over training (means over seeds).",
                      ylabel="error", curves=("train_error", "test_error"),
                      labels=("train error", "test error"), styles=("C0--", "C3-"), logy=True)
        return [errors, Plot("path", "barrier", "Barrier curves along α", "Test error along the linear path "
                     "θ(α) = (1 − α)θ₁ + αθ₂ between two networks: independently trained (before "
                     "matching), after permutation matching, and children spawned from one parent.",
                     ylabel="test error", xlabel="α", paths=paths,
                     x=tuple(float(a) for a in self.alpha_grid))]

    def make_data(self, seed: int) -> dict[str, torch.Tensor]:
        """Gaussian clusters around random centres, each cluster labelled with a random class.

        Random labels make the classes non-convex unions of clusters, so a network must bend
        its decision boundaries; cluster overlap keeps the minibatch gradients noisy.
        """
        self.check_config()
        cfg = self.config
        gen = seeding.generator(seed, "data")
        centres = torch.randn(cfg["clusters"], cfg["dim"], generator=gen)  # (K, d)
        # Balanced labels: each class owns ⌊K/C⌋ or ⌈K/C⌉ clusters, in random order.
        labels = torch.arange(cfg["clusters"])[torch.randperm(cfg["clusters"], generator=gen)]
        labels = labels % cfg["classes"]  # (K,)
        out = {}
        for part in ("train", "test"):
            n = cfg[f"n_{part}"]
            which = torch.randint(cfg["clusters"], (n,), generator=gen)  # (n,) cluster ids
            noise = cfg["cluster_std"] * torch.randn(n, cfg["dim"], generator=gen)
            out[f"x_{part}"] = centres[which] + noise  # (n, d)
            out[f"y_{part}"] = labels[which]  # (n,)
        return out

    def snapshot(self, model: nn.Module) -> Weights:
        return snapshot(model, self.config["depth"])

    def inapplicable(self, model: nn.Module) -> tuple[str, ...]:
        """Weight matching and LLFC need the reference layout (they permute hidden units and
        read hidden features): other models get the barriers without them. Barriers also need
        the two networks' floating buffers to be equal (STATE), which only training tells:
        where they differ, `run_seeds` adds STATE_METRICS to the run's."""
        return self.matching(LAYOUT_METRICS) if self.snapshot(model).mlp is None else ()

    def matching(self, patterns: tuple[str, ...]) -> tuple[str, ...]:
        """The task's metrics that `patterns` (fnmatch) name."""
        return tuple(m for m in self.metrics() if any(fnmatch.fnmatchcase(m, p) for p in patterns))

    def probe(self, data):
        x = data["x_train"][:8]  # (8, d)
        return x, (len(x), self.config["classes"])

    def reference_model(self, generator: torch.Generator) -> nn.Sequential:
        """[Linear, ReLU] × depth, Linear: He-normal weights from the `purpose` stream, zero biases.

        Built on the meta device first: nn.Linear's own initialisation would draw from the
        global RNG.
        """
        self.check_config()
        cfg = self.config
        widths = [cfg["dim"]] + [cfg["width"]] * cfg["depth"] + [cfg["classes"]]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out, device="meta"), nn.ReLU()]
        model = nn.Sequential(*layers[:-1]).to_empty(device="cpu")
        gen = generator
        with torch.no_grad():
            for module in model:
                if isinstance(module, nn.Linear):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=gen)
                    nn.init.zeros_(module.bias)
        return model

    def sample_batch(self, data, step, generator):
        # i.i.d. indices from the stream named by the caller's purpose: the data order is the
        # only thing two children spawned from one parent differ by.
        idx = torch.randint(len(data["y_train"]), (self.config["batch_size"],),
                            generator=generator, device=generator.device)
        return {"x": data["x_train"][idx], "y": data["y_train"][idx]}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"])

    def observe(self, model: nn.Module, data: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for part in ("train", "test"):
            logits = model(data[f"x_{part}"])  # (n, C)
            out[f"{part}_loss"] = float(F.cross_entropy(logits, data[f"y_{part}"]))
            out[f"{part}_error"] = float((logits.argmax(1) != data[f"y_{part}"]).double().mean())
        return out

    # -- the procedure ------------------------------------------------------------------------
    @staticmethod
    def spawn(parent: nn.Module, parent_opt: torch.optim.Optimizer,
              parent_schedule) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
        """A child: a copy of the parent's parameters, optimizer and schedule, every attribute of
        them included, so that the child continues exactly as the parent would have."""
        return copy_training_state(parent, parent_opt, parent_schedule)

    def path_values(self, pair: str, a: Weights, b: Weights, data, *,
                    forward: Callable[[], ContextManager] = contextlib.nullcontext) -> dict[str, float]:
        """Test loss and error along θ(α) = (1 − α)θ_A + αθ_B, one curve value per α.
        `forward()`: the context of a call of the model's forward (Trainer.model_code). Where
        the networks' floating buffers differ (STATE) only the networks themselves are
        measured (α = 0 and 1: their test errors), NaN between."""
        alphas = self.alpha_grid
        if a.mlp is not None:
            curve = path_curve(params_a=a.mlp, params_b=b.mlp, alphas=alphas,
                               x=data["x_test"], y=data["y_test"])
        else:  # any architecture: interpolate its state by name; its forward is the entry's code
            ends = bool(moved_buffers(a, b))  # the points between would interpolate them
            with forward():
                curve = state_path_curve(model=a.model, state_a=a.state, state_b=b.state,
                                         alphas=[0.0, 1.0] if ends else alphas,
                                         x=data["x_test"], y=data["y_test"])
            if ends:
                curve = {kind: np.array([curve[kind][0], *[math.nan] * (len(alphas) - 2), curve[kind][1]])
                         for kind in ("loss", "error")}
        out = {}
        for kind in ("loss", "error"):
            out.update({path_name(pair, kind, a): v for a, v in zip(alphas, curve[kind], strict=True)})
        return out

    def llfc_values(self, params_a, params_b, data) -> dict[str, float]:
        """LLFC distance of each reported layer at α = 0.5, and its F_A-vs-F_B baseline."""
        mid = interpolate(params_a=params_a, params_b=params_b, alpha=LLFC_ALPHA)
        with torch.no_grad():
            feats = [mlp_forward(params=p, x=data["x_test"], return_features=True)[1]
                     for p in (mid, params_a, params_b)]  # 3 × [(n, h_1), ..., (n, C)]
        out = {}
        for l in self.llfc_layers:
            dist = llfc_distance(features_interp=feats[0][l], features_a=feats[1][l],
                                 features_b=feats[2][l], alpha=LLFC_ALPHA)
            out[f"llfc/layer_{l}"] = dist["cosine_per_sample"]
            out[f"llfc_baseline/layer_{l}"] = dist["baseline_per_sample"]
        return out

    def optimizer_steps(self) -> int:
        """The parent up to the last spawn step, two children from each, two independent nets."""
        steps = self.config["steps"]
        return max(self.spawn_steps) + sum(2 * (steps - k) for k in self.spawn_steps) + 2 * steps

    def run(self, seed: int, trainer: Trainer) -> Trajectory:
        return self.run_seeds([seed], trainer)[0]

    def run_seeds(self, seeds: list[int], trainer: Trainer,
                  runs: list[Trainer] | None = None) -> list[Trajectory]:
        """For each seed: spawned children per spawn step, two independent networks, matched.

        One timeline for every network of every seed. Each seed's parent and independent pair
        start at step 0; at each spawn step k the parent's two children join (copies of its
        state), and after the last spawn step the parent stops: from 3 networks per seed to
        2 + 2·(spawn steps). Between spawn steps every live network trains side by side (one
        vmapped batch when the entry allows it, `suite.batched.train_lanes`); they have all
        taken the same number of steps, so their optimizer state (Adam's step count) stacks
        into one optimizer. Each network has its own data stream and global-RNG state, so side
        by side or one after another (`runner.alone`) it sees the same numbers. Only independent
        network A is evaluated during training: its curves are the run's; path and LLFC values
        are added at the final step. A diverged network ends its seed's run; the others go on.
        Runs are indexed by position (a study's trials share a seed: `runs`, Task.run_seeds).
        """
        steps = self.config["steps"]
        owners = [None if run is None or run is trainer else run for run in (runs or [None] * len(seeds))]
        indices = range(len(seeds))
        datas = {seed: trainer.to_device(self.make_data(seed)) for seed in seeds}  # checks the config
        done = {r: SeedRun(data=datas[seeds[r]]) for r in indices}

        def make(r: int, name: str, purpose: str) -> Network:
            return self.network(trainer, seeds[r], name, purpose, datas[seeds[r]], run=r,
                                owner=owners[r])

        parents = {r: make(r, "parent", "init") for r in indices}
        pairs = {r: [make(r, f"independent_{side}", f"init_{side}") for side in ("a", "b")]
                 for r in indices}
        children: dict[int, list[Network]] = {r: [] for r in indices}  # in spawn-step order

        def segment(start: int, end: int) -> None:
            """Every network of every live run from `start` to `end`."""
            for n in parents.values():  # the parent's batches: one stream per segment
                n.stream = seeding.generator(n.seed, f"parent_from_{start}", trainer.device)
            live = [n for r in indices if done[r].failed is None
                    for n in [*([parents[r]] if r in parents else []), *pairs[r], *children[r]]]
            self.train_segment(trainer, live, done, datas, start=start, end=end)

        at = 0
        for k in self.spawn_steps:
            segment(at, k)
            at = k
            for r, parent in parents.items():
                if done[r].failed is None:
                    children[r] += [self.spawn_network(trainer, parent, f"spawn_{k}_{side}")
                                    for side in ("a", "b")]
        parents = {}  # no spawn step left: the parents stop
        segment(at, steps)

        for r in indices:
            run = done[r]
            if run.failed is not None:
                continue
            moved = []
            for a, b in zip(*[iter(children[r])] * 2, strict=True):
                pair = a.network.removesuffix("_a")
                wa, wb = self.trained_weights(trainer, a), self.trained_weights(trainer, b)
                moved += moved_buffers(wa, wb)
                run.final.update(self.path_values(pair, wa, wb, run.data, forward=forward_of(trainer, a)))
            a, b = pairs[r]
            run.traj = a.traj
            wa, wb = self.trained_weights(trainer, a), self.trained_weights(trainer, b)
            moved += moved_buffers(wa, wb)
            self.compare_independent(run, wa, wb, seeds[r], forward=forward_of(trainer, a))
            if moved:  # barriers between such networks measure no network (STATE)
                run.traj.not_applicable = tuple(sorted({*run.traj.not_applicable,
                                                        *self.matching(STATE_METRICS)}))
        return [done[r].trajectory(steps) for r in indices]

    def trained_weights(self, trainer: Trainer, net: Network) -> Weights:
        """A trained network's weights as its evaluations see them: taken with its optimizer in
        eval mode (a schedule-free optimizer's averaged weights, which the curves of network A
        were measured on; its train-mode weights are another point), then back to train mode."""
        owner = net.owner or trainer
        with owner.entry_code(net.seed, "optimizer.eval", net.network):
            set_mode(net.optimizer, "eval")
        weights = self.snapshot(net.model)
        with owner.entry_code(net.seed, "optimizer.train", net.network):
            set_mode(net.optimizer, "train")
        return weights

    def train_segment(self, trainer: Trainer, nets: list[Network], runs: dict[int, SeedRun],
                      datas: dict[int, Any], *, start: int, end: int) -> None:
        """Train `nets` from `start` to `end` side by side; a diverged network fails its run."""
        lanes = [Lane(n.seed, n.model, n.optimizer, datas[n.seed], n.stream, n.traj, n.schedule,
                      n.network, observed=n.network == "independent_a", owner=n.owner) for n in nets]
        before = [n.traj.steps_done for n in nets]
        train_lanes(trainer, lanes, start=start, end=end)
        for n, steps_before in zip(nets, before, strict=True):
            run = runs[n.run]
            run.done += n.traj.steps_done - steps_before
            if n.traj.status != "ok" and run.failed is None:
                run.failed = n.traj

    def network(self, trainer: Trainer, seed: int, name: str, purpose: str, data, *, run: int = 0,
                owner: Trainer | None = None) -> Network:
        """A network built from the init stream `purpose` by its run's trainer (`owner`, else
        `trainer`); its batches come from the stream `name`."""
        builder = owner or trainer
        model = builder.make_model(seed, data, network=name, purpose=purpose)
        optimizer, schedule = builder.make_optimizer(model, seed=seed, network=name)
        return Network(seed, name, model, optimizer, schedule, traj=Trajectory(),
                       stream=seeding.generator(seed, name, trainer.device), run=run, owner=owner)

    def spawn_network(self, trainer: Trainer, parent: Network, name: str) -> Network:
        model, optimizer, schedule = self.spawn(parent.model, parent.optimizer, parent.schedule)
        (parent.owner or trainer).fork_entry_rng(parent.seed, parent.network, name)
        return Network(parent.seed, name, model, optimizer, schedule, traj=Trajectory(),
                       stream=seeding.generator(parent.seed, name, trainer.device), run=parent.run,
                       owner=parent.owner)

    def compare_independent(self, run: SeedRun, a: Weights, b: Weights, seed: int, *,
                            forward: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
        """Barriers of the independent pair before and after weight matching, and LLFC (the
        last two for the reference layout only)."""
        run.final.update(self.path_values("independent", a, b, run.data, forward=forward))
        if a.mlp is None:
            return
        perms = weight_matching(params_a=a.mlp, params_b=b.mlp,
                                generator=seeding.generator(seed, "matching"))
        matched = Weights(b.model, permute_params(params=b.mlp, perms=perms), {})
        run.final.update(self.path_values("matched", a, matched, run.data))
        run.final.update(self.llfc_values(a.mlp, matched.mlp, run.data))

    def summarize(self, steps, curves, data) -> dict[str, float]:
        alphas = self.alpha_grid
        out = {}
        for pair in self.pairs:
            for kind in ("loss", "error"):
                # Undefined where not measured (not applicable) or a network did not learn.
                out[f"{kind}_barrier/{pair}"] = math.nan if not self.trained(curves, pair) else barrier(
                    values=[curves[path_name(pair, kind, a)][-1] for a in alphas], alphas=alphas)
        for l in self.llfc_layers:
            for name in (f"llfc/layer_{l}", f"llfc_baseline/layer_{l}"):
                defined = name in curves and self.trained(curves, "matched")
                out[name] = float(curves[name][-1]) if defined else math.nan
        out["test_error"] = float(np.mean(end_errors(curves, "independent")))
        out["stable_spawn_step"] = stable_spawn_step(
            spawn_steps=self.spawn_steps,
            error_barriers=[out[f"error_barrier/spawn_{k}"] for k in self.spawn_steps],
            child_errors=[max(end_errors(curves, f"spawn_{k}")) for k in self.spawn_steps],
            threshold=self.config["barrier_threshold"],
            trained_error=self.config["trained_error"])
        return out

    def trained(self, curves, pair: str) -> bool:
        """Whether `pair` was measured and both its networks end at test error at most the
        tier's trained_error (a measurement between them means something only then)."""
        measured = path_name(pair, "error", 0.0) in curves
        return measured and all(e <= self.config["trained_error"] for e in end_errors(curves, pair))


def forward_of(trainer: Trainer, net: Network) -> Callable[[], ContextManager]:
    """The context of a call of `net`'s model outside training (its run's Trainer.model_code):
    on the architecture track, the entry's errors located and its own global-RNG state lent."""
    owner = net.owner or trainer
    return lambda: owner.model_code(net.seed, net.network)


def end_errors(curves, pair: str) -> list[float]:
    """The final test errors of a pair's two networks: its path's ends, α = 0 and 1."""
    return [float(curves[path_name(pair, "error", a)][-1]) for a in (0.0, 1.0)]


def stable_spawn_step(*, spawn_steps: list[int], error_barriers: list[float],
                      child_errors: list[float], threshold: float, trained_error: float) -> float:
    """Smallest spawn step whose error barrier is below `threshold` and whose children both
    learned (the larger of their test errors, `child_errors`, at most `trained_error`); +inf if
    none is.

    NaN values (no result) never count as stable.
    """
    stable = [k for k, b, e in zip(spawn_steps, error_barriers, child_errors, strict=True)
              if np.isfinite(b) and b < threshold and np.isfinite(e) and e <= trained_error]
    return float(min(stable)) if stable else math.inf
