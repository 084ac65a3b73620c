"""asv benchmarks per task: training speed, costly metrics, peak memory, accuracy with a baseline.

Speed and memory use the Adam baseline on the cpu-2core profile; accuracy uses the SGD baseline,
whose dynamics the tasks' theory describes. The baselines (entry code and hyperparameters) come
from this checkout, so across commits only the suite changes. The task list comes from this
checkout's `suite/tasks/`: a new task gets its speed, memory and steps-to-target benchmarks
without edits here, and is skipped at commits whose suite lacks it.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from suite import registry, runner

from .common import baseline, baseline_trainer, checkout_tasks, configured

TARGETS = checkout_tasks()  # task -> its target metric
TASKS = list(TARGETS)
STEPS = 100  # training steps timed per run: enough that per-run setup is a small share
SEEDS = 8


def batched_run(name: str, tier: str, steps: int):
    """(suite.batched, task, trainer) for timing `name`'s seeds as one batch; NotImplementedError
    (asv: skipped) at commits before seed batching, or for a task with its own procedure."""
    try:
        from suite import batched
    except ImportError:
        raise NotImplementedError("no seed batching at this commit") from None
    task = configured(name, tier, steps, 2)
    if not batched.batchable(task):
        raise NotImplementedError(f"{name} has its own procedure: its seeds run one by one")
    return batched, task, baseline_trainer(task)


class TrainSteps:
    """Wall time of STEPS steps of one run on each task's smoke tier (2 evaluations)."""

    params = TASKS
    param_names = ["task"]
    number = 1  # one call is one training run
    repeat = (2, 5, 10.0)  # 2 to 5 samples per round, stopping after 10 s: minutes per commit
    timeout = 300

    def setup(self, name):
        self.task = configured(name, "smoke", STEPS, 2)
        self.trainer = baseline_trainer(self.task)

    def time_one_seed(self, name):
        self.task.run(0, self.trainer)


class TrainSeedsBatched:
    """Wall time of STEPS steps of SEEDS seeds trained as one batch (`--seed-batch auto`)."""

    params = TASKS
    param_names = ["task"]
    number = 1  # one call is one training run
    repeat = (2, 5, 10.0)  # 2 to 5 samples per round, stopping after 10 s: minutes per commit
    timeout = 300

    def setup(self, name):
        self.batched, self.task, self.trainer = batched_run(name, "smoke", STEPS)

    def time_8_seeds(self, name):
        self.batched.train_seeds(self.task, self.trainer, list(range(SEEDS)))


class StandardRunMemory:
    """Peak memory of a standard-tier run (20 steps: nothing that grows with steps is large)."""

    params = TASKS
    param_names = ["task"]
    timeout = 300

    def setup(self, name):
        self.task = configured(name, "standard", 20, 2)
        self.trainer = baseline_trainer(self.task)

    def peakmem_standard_run(self, name):
        self.task.run(0, self.trainer)


class StandardBatchMemory:
    """Peak memory of 5 standard-tier runs trained as one batch (`--seed-batch auto`)."""

    params = TASKS
    param_names = ["task"]
    timeout = 300

    def setup(self, name):
        self.batched, self.task, self.trainer = batched_run(name, "standard", 20)

    def peakmem_standard_5_seeds(self, name):
        self.batched.train_seeds(self.task, self.trainer, list(range(5)))


class ConnectivityMetrics:
    """The metric computations that cost: weight matching and the barrier's path evaluation,
    on two independently initialised networks of mode-connectivity's standard tier."""

    timeout = 120

    def setup(self):
        try:
            from suite.metrics import connectivity
            task = registry.make_task("mode-connectivity", "standard")
        except (ImportError, registry.RegistryError):
            raise NotImplementedError("no mode-connectivity at this commit") from None
        self.metrics, self.alphas = connectivity, task.alpha_grid
        self.data = task.make_data(0)
        # make_model(seed, purpose) since the architecture entries; init_model(seed, purpose) before
        build = task.init_model if hasattr(task, "init_model") else task.make_model
        self.a, self.b = (connectivity.params_from_sequential(model=build(0, side))
                          for side in ("init_a", "init_b"))

    def time_weight_matching(self):
        self.metrics.weight_matching(params_a=self.a, params_b=self.b,
                                     generator=torch.Generator().manual_seed(0))

    def time_barrier(self):
        curve = self.metrics.path_curve(params_a=self.a, params_b=self.b, alphas=self.alphas,
                                        x=self.data["x_test"], y=self.data["y_test"])
        self.metrics.barrier(values=curve["loss"], alphas=curve["alpha"])


def closed_form_error() -> float:
    """Largest relative error of deep-linear-modes' stage times against Saxe et al.'s t½.

    The closed form's setting: aligned, balanced initialisation u₀ = 10⁻³ and plain gradient
    descent (the SGD baseline's code) at λ = 0.002, where λ·s_max = 0.006 keeps discrete steps
    close to the continuous dynamics.
    """
    from suite.tasks.deep_linear_modes import saxe_half_time

    lr, u0 = 0.002, 1e-3
    with tempfile.TemporaryDirectory() as out:
        runs = runner.run_suite(
            gd_entry(Path(out) / "gd", lr), tasks=["deep-linear-modes"], tier="smoke",
            out=Path(out) / "runs", progress=False,
            sets=["init=aligned", f"init_scale={u0}", "steps=3000", "evals=400"])
    times = runs.set_index("metric")["value"]
    task = registry.make_task("deep-linear-modes", "smoke")
    errors = [abs(times[f"stage_time/mode_{i}"] / saxe_half_time(s=s, u0=u0, lr=lr) - 1.0)
              for i, s in enumerate(task.s)]
    return float(max(errors))


def gd_entry(folder: Path, lr: float) -> Path:
    """An entry with the SGD baseline's code and learning rate `lr`."""
    folder.mkdir()
    (folder / "entry.py").write_text((baseline("sgd") / "entry.py").read_text())
    (folder / "entry.toml").write_text(
        'name = "gd"\nversion = 1\nauthors = ["ldbench"]\ndescription = "gradient descent"\n'
        f"[hparams.default]\nlr = {lr}\n")
    return folder


# The baseline whose run each task's accuracy is tracked with: SGD, whose dynamics the tasks'
# theory describes, except where SGD shows nothing (it never groks modular addition).
# The new tasks' tiers were chosen with AdamW (in-context-regression's paper trains with Adam).
ACCURACY_ENTRY = {"modular-addition": "adamw", "markov-attention": "adamw",
                  "fine-grained-collapse": "adamw", "in-context-regression": "adamw"}


class Accuracy:
    """What each task measures, with a baseline (`ACCURACY_ENTRY`) on the smoke tier, seed 0.

    Lower is better for every number here, as asv assumes. A number a commit cannot produce
    (its suite lacks the task; a target not reached) is NaN, which asv shows as n/a: an
    infinite value would hang `asv publish`'s step detection.
    """

    timeout = 900

    def setup_cache(self):
        values = {}
        for entry in sorted(set(ACCURACY_ENTRY.values()) | {"sgd"}):
            tasks = [t for t in TASKS if ACCURACY_ENTRY.get(t, "sgd") == entry
                     and t in registry.all_tasks()]
            if not tasks:
                continue
            with tempfile.TemporaryDirectory() as out:
                runs = runner.run_suite(baseline(entry), tasks=tasks, seeds=1, tier="smoke",
                                        out=out, progress=False)
            values |= {f"{row.task}/{row.metric}": float(row.value) for row in runs.itertuples()}
        values["closed_form_error"] = closed_form_error()
        return values

    def track_deep_linear_stage_time_error(self, values):
        return values["closed_form_error"]

    track_deep_linear_stage_time_error.unit = "relative error of t½ vs closed form"

    def track_deep_linear_final_loss(self, values):
        return value(values, "deep-linear-modes/final_loss")

    track_deep_linear_final_loss.unit = "loss"

    def track_shared_representation_subspace_distance(self, values):
        return value(values, "shared-representation/subspace_distance")

    track_shared_representation_subspace_distance.unit = "sin of largest principal angle"

    def track_teacher_student_excess_test_error(self, values):
        """Best test error over the theory's early-stopping optimum, minus 1."""
        if "teacher-student" not in registry.all_tasks():
            return math.nan
        optimum = registry.make_task("teacher-student", "smoke").optimum
        return value(values, "teacher-student/min_test_error") / optimum - 1.0

    track_teacher_student_excess_test_error.unit = "relative excess"

    def track_modular_addition_test_error(self, values):
        return 1.0 - value(values, "modular-addition/final_test_acc")

    track_modular_addition_test_error.unit = "error fraction"

    def track_modular_addition_grokking_delay(self, values):
        return value(values, "modular-addition/grokking_delay")

    track_modular_addition_grokking_delay.unit = "steps"

    def track_mode_connectivity_matched_error_barrier(self, values):
        return value(values, "mode-connectivity/error_barrier/matched")

    track_mode_connectivity_matched_error_barrier.unit = "error fraction"

    def track_markov_attention_excess_loss(self, values):
        """Final loss over the chain's exact conditional entropy L_m (the ladder's last level)."""
        return value(values, "markov-attention/final_excess")

    track_markov_attention_excess_loss.unit = "nats"

    def track_fine_grained_collapse_recovery_error(self, values):
        """1 − fine-label recovery accuracy of the trained features (exact recovery is 1)."""
        return 1.0 - value(values, "fine-grained-collapse/final_recovery")

    track_fine_grained_collapse_recovery_error.unit = "error fraction"

    def track_in_context_regression_excess_loss(self, values):
        """Held-out loss above the exact Bayes-optimal (ridge) loss at the training length."""
        return value(values, "in-context-regression/excess_loss")

    track_in_context_regression_excess_loss.unit = "squared error above Bayes-optimal"

    def track_in_context_regression_excess_loss_4x(self, values):
        """The same on prompts 4x longer than trained on (length generalisation)."""
        return value(values, "in-context-regression/excess_loss_4x")

    track_in_context_regression_excess_loss_4x.unit = "squared error above Bayes-optimal"


def value(values: dict[str, float], key: str) -> float:
    """A tracked number; NaN (no result) at a commit whose task lacks it, or when not finite."""
    number = values.get(key, math.nan)
    return number if math.isfinite(number) else math.nan


def steps_to_target(task: str):
    """A track_ method for `task`'s target metric (the one the scorer ranks by)."""
    target = TARGETS[task]

    def track(self, values):
        return value(values, f"{task}/{target}")

    track.unit = "steps"
    track.__doc__ = f"{task}: {target} (n/a: not reached within the smoke tier's budget)."
    return track


for _task in TASKS:
    setattr(Accuracy, f"track_steps_to_target_{_task.replace('-', '_')}", steps_to_target(_task))
