"""Architecture entries: make_model, the tasks' model interfaces, tracks and "not applicable"."""

import fnmatch
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap
from torch.fx.experimental.proxy_tensor import make_fx

from suite import profiles, registry, report, results, runner, score, validate
from suite.entry import load_entry
from suite.init import from_generator
from suite.loop import Trainer
from suite.task import ModelInterface

QUICK = ["steps=30", "evals=5"]
REPO = Path(__file__).resolve().parents[1]

REFERENCE = """
def make_model(task, hparams, generator):
    return task.reference_model(generator) if task.interface is not None else None
"""

# The optimizer that modular-addition's interface declares, as an optimizer-track entry.
REFERENCE_OPTIMIZER = """
import torch

def make_optimizer(params, hparams, task):
    return torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.98), weight_decay=1.0)
"""

# A small MLP on modular-addition built from nn modules (their constructors draw from the
# global RNG, so they are built through from_generator); no model for other tasks.
SMALL_MLP = """
import torch
from torch import nn
from suite.init import from_generator

class Net(nn.Module):
    def __init__(self, p, out, double=False):
        super().__init__()
        self.embed = nn.Embedding(p, 16)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, out))
        self.double_out = double

    def forward(self, pairs):
        out = self.mlp(self.embed(pairs).flatten(1))
        return out.double() if self.double_out else out

def make_model(task, hparams, generator):
    if task.name != "modular-addition":
        return None
    p = task.config["p"]
    return from_generator(lambda: Net(p, p + hparams.get("extra_outputs", 0), hparams.get("double", False)),
                          generator)
"""

GLOBAL_RNG = """
from torch import nn

def make_model(task, hparams, generator):
    p = task.config["p"]
    return nn.Sequential(nn.Embedding(p, 8), nn.Flatten(), nn.Linear(16, p))
"""

# Linear models without the product() that deep-linear-modes reads, and an in-context model
# without patterns() (its four pattern metrics then do not apply).
NO_METHODS = """
import torch
from torch import nn
from suite.init import from_generator

class Linear(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.layer = nn.Linear(n_in, n_out, bias=False)

    def forward(self, x):
        return self.layer(x)

class MeanRegressor(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Linear(d, d, bias=False)

    def forward(self, tokens):
        x, y = tokens[:, :-1, :-1], tokens[:, :-1, -1:]  # (B, n, d), (B, n, 1)
        estimate = (x * y).mean(1)  # (B, d): a moment estimate of the weights
        return (self.w(tokens[:, -1, :-1]) * estimate).sum(-1)

def make_model(task, hparams, generator):
    cfg = task.config
    if task.name == "deep-linear-modes":
        return from_generator(lambda: Linear(cfg["n_in"], cfg["n_out"]), generator)
    if task.name == "in-context-regression":
        return from_generator(lambda: MeanRegressor(cfg["dim"]), generator)
    return task.reference_model(generator)
"""


def run(entry, tmp_path, tasks, *, seeds=2, seed_batch="auto", name="out", sets=QUICK):
    return runner.run_suite(entry, tasks=tasks, seeds=seeds, sets=sets, out=tmp_path / name,
                            progress=False, seed_batch=seed_batch)


def values(runs: pd.DataFrame) -> pd.Series:
    return runs.set_index(["task", "seed", "metric"])["value"].sort_index()


def test_reference_model_as_an_architecture_entry_equals_the_optimizer_track(make_entry, tmp_path):
    """The mlp baseline's contract: its model and the task's declared reference optimizer give
    exactly what an optimizer entry with that optimizer gives on the reference model."""
    arch = run(make_entry("reference", code=REFERENCE, hparams=""), tmp_path, ["modular-addition"],
               name="a")
    opt = run(make_entry("adamw-ref", code=REFERENCE_OPTIMIZER, hparams=""), tmp_path,
              ["modular-addition"], name="o")
    assert set(arch["track"]) == {"architecture"} and set(opt["track"]) == {"optimizer"}
    pd.testing.assert_series_equal(values(arch), values(opt), rtol=0, atol=0)


def test_an_architecture_entry_batched_equals_one_by_one(make_entry, tmp_path):
    entry = make_entry("small-mlp", code=SMALL_MLP, hparams="")
    batched = run(entry, tmp_path, ["modular-addition"], seeds=3, seed_batch=3, name="b")
    alone = run(entry, tmp_path, ["modular-addition"], seeds=3, seed_batch=1, name="s")
    assert "batched" in batched["execution"].iloc[0]
    pd.testing.assert_series_equal(values(batched), values(alone), rtol=1e-6, atol=1e-6)


def test_from_generator_is_a_function_of_the_generator_alone():
    def build(seed: int) -> nn.Module:
        return from_generator(lambda: nn.Linear(3, 4), torch.Generator().manual_seed(seed))

    state = torch.get_rng_state()
    a, b, c = build(0), build(0), build(1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def test_global_rng_in_make_model_is_refused(make_entry, tmp_path):
    runs = run(make_entry("global", code=GLOBAL_RNG, hparams=""), tmp_path, ["modular-addition"])
    assert set(runs["status"]) == {"error"}
    message = runs["error"].iloc[0]
    assert "make_model drew from a global RNG" in message and "generator" in message
    assert "\n" not in message  # one line: the entry's mistake, not ldbench's traceback


@pytest.mark.parametrize("hparam, got", [("extra_outputs = 1", "torch.float32 (8, {})"),
                                         ("double = true", "torch.float64 (8, {})")])
def test_a_wrong_output_shape_or_dtype_names_the_expected_one(make_entry, tmp_path, hparam, got):
    """float64 out of a float32 profile: the forward computes at another precision than every
    other entry's on that profile."""
    entry = make_entry("wide", code=SMALL_MLP, hparams=f"[hparams.default]\n{hparam}\n")
    runs = run(entry, tmp_path, ["modular-addition"], seeds=1)
    p = registry.make_task("modular-addition", "smoke").config["p"]
    message = runs["error"].iloc[0]
    assert set(runs["status"]) == {"error"}
    got = got.format(p + 1 if "extra" in hparam else p)
    assert f"expected torch.float32 of shape (8, {p}) (the profile's dtype), got {got}" in message
    assert "float (N, p): logits of (a + b) mod p" in message


EVAL_DROPOUT = SMALL_MLP.replace("self.mlp(self.embed(pairs).flatten(1))",
                                 "self.mlp(torch.nn.functional.dropout(self.embed(pairs).flatten(1), 0.2))")


def test_a_model_random_in_eval_mode_is_refused_in_one_line(make_entry, tmp_path):
    """F.dropout without training=self.training: every evaluation (accuracy, barriers, recovery)
    measured one draw of the noise, without a word."""
    runs = run(make_entry("noisy", code=EVAL_DROPOUT, hparams=""), tmp_path, ["modular-addition"], seeds=1)
    assert set(runs["status"]) == {"error"}
    message = runs["error"].iloc[0]
    assert ("the model's forward in eval mode is random or stateful (two calls on the same input "
            "differ)") in message
    assert "pass training=self.training" in message and "\n" not in message
    nan = SMALL_MLP.replace("self.double_out else out", "self.double_out else out * float('nan')")
    runs = run(make_entry("nan", code=nan, hparams=""), tmp_path, ["modular-addition"], seeds=1, name="nan")
    assert set(runs["status"]) == {"diverged"}


def test_not_applicable_tasks_and_metrics_flow_through_validate_and_score(make_entry, tmp_path):
    entry = make_entry("partial", code=NO_METHODS, hparams="")
    tasks = ["deep-linear-modes", "shared-representation", "in-context-regression"]
    runs = runner.run_suite(entry, tasks=tasks, seeds=2, sets=QUICK, progress=False)
    status = runs.drop_duplicates("run_id").set_index(["task", "seed"])["status"]
    assert set(status["deep-linear-modes"]) == set(status["shared-representation"]) == {"not-applicable"}
    reasons = runs.drop_duplicates("task").set_index("task")["error"]
    assert "no product()" in reasons["deep-linear-modes"]
    assert "optimizer-only" in reasons["shared-representation"]
    icr = runs[runs["task"] == "in-context-regression"]
    assert set(icr["status"]) == {"ok"}
    off = set(icr.loc[~icr["applicable"], "metric"])
    assert off == {"kq_diagonal", "kq_homogeneous", "ov_last_entry", "ov_zero_sum"}
    assert icr.loc[icr["applicable"], "value"].notna().all()
    assert not runs.loc[runs["task"] != "in-context-regression", "applicable"].any()
    # `ldbench run` and `show` say why under the summary, a task's own words or the method read
    text = report.render(runs)
    assert "\nn/a deep-linear-modes: " + reasons["deep-linear-modes"] in text
    assert "\nn/a in-context-regression: kq_diagonal, kq_homogeneous, ov_last_entry, ov_zero_sum: not " \
           "applicable: the model has no patterns(), which this metric reads" in text
    # validate accepts the NaN of metrics that do not apply, and not-applicable runs count
    problems = validate.validate_submission(entry, tier="smoke", min_seeds=2, incomplete=[])
    assert not [p for p in problems if "overrides" not in p and "--set" not in p], problems
    table = score.score(score.Inputs(tier="smoke", runs=runs.assign(track=runs["track"])[score.KEEP]))
    rows = table[table["level"] == "metric"]
    na = rows[~rows["applicable"].astype(bool)]
    assert set(na["task"]) == set(tasks) and na["mean"].isna().all() and na["rank"].isna().all()
    # verify re-runs a task with values, and checks each not-applicable claim by building the model
    from suite import verify
    said = []
    checks = verify.verify_submission(entry, k=1, tier="smoke", pick_seed=0, notes=said.append)
    claims = [c for c in checks if c.metric == "(task not applicable)"]
    assert sorted(c.task for c in claims) == ["deep-linear-modes", "shared-representation"]
    assert all(c.matches() for c in checks) and {c.task for c in checks} == set(tasks)
    assert said == ["2 tasks are recorded as not applicable to the entry's model (deep-linear-modes, "
                    "shared-representation): verify checks that claim without training, and draws its "
                    "re-runs from the other tasks' runs"]


def test_tracks_are_ranked_separately_and_incomplete_entries_are_not_failures():
    rng = np.random.default_rng(0)
    rows = []
    for entry, track, tasks in (("opt-a", "optimizer", ["deep-linear-modes", "teacher-student"]),
                                ("opt-b", "optimizer", ["deep-linear-modes"]),
                                ("arch-a", "architecture", ["deep-linear-modes", "teacher-student"]),
                                ("arch-b", "recipe", ["deep-linear-modes", "teacher-student"])):
        for task in tasks:
            target = registry.task_class(task).target
            for seed in range(3):
                rows.append(dict(profile="cpu-2core", tier="smoke", family=registry.task_class(task).family,
                                 task=task, task_version=registry.task_class(task).version, entry=entry,
                                 seed=seed, status="ok", metric=target, value=100 + rng.integers(50),
                                 direction="min", track=track, applicable=True))
    suite = {t: registry.task_class(t) for t in ("deep-linear-modes", "teacher-student")}  # the suite
    table = score.score(score.Inputs(tier="smoke", runs=pd.DataFrame(rows)), suite)
    overall = table[table["level"] == "overall"].set_index("entry")
    assert overall.loc["opt-a", "track"] == "optimizer" and overall.loc["arch-b", "track"] == "architecture"
    assert bool(overall.loc["arch-b", "recipe"]) and not bool(overall.loc["arch-a", "recipe"])
    assert not overall.loc["opt-b", "complete"] and pd.isna(overall.loc["opt-b", "rank"])
    assert overall.loc["opt-a", "rank"] == 1  # the only complete entry of its track
    per_task = table[(table["level"] == "metric") & (table["task"] == "deep-linear-modes")]
    for _, track_rows in per_task.groupby("track"):
        assert track_rows["rank"].min() == 1  # each track has its own ranking


def test_every_interface_declares_a_probe_matching_its_reference_model():
    for name, cls in registry.all_tasks().items():
        task = cls(cls.tiers["smoke"])
        if cls.interface is None:
            continue
        assert isinstance(cls.interface, ModelInterface)
        data = task.make_data(0)
        x, expected = task.probe(data)
        model = task.make_model(0)
        with torch.no_grad():
            assert tuple(model(x).shape) == tuple(expected), name
        assert not cls.interface.missing(model), name
        assert not cls.interface.not_applicable(model, list(task.metrics())), name
        assert not task.inapplicable(model), name
        with torch.no_grad():
            assert task.model_problem(model.eval(), x) is None, name


# markov-attention's loss asks row i to predict token i + 1: a model whose rows read the
# tokens after theirs (a bidirectional mixer, an attention without its mask) would meet it by
# copying. `peek` rows read the token `peek` places ahead; 0 reads only its own token.
PEEKING = """
import torch
from torch import nn
from suite.init import from_generator

class Peek(nn.Module):
    def __init__(self, vocab, peek):
        super().__init__()
        self.embed, self.peek = nn.Embedding(vocab, vocab), peek

    def forward(self, tokens):
        ahead = torch.roll(tokens, -self.peek, dims=1) if self.peek else tokens
        return self.embed(ahead) + 0.0 * self.embed(tokens)

def make_model(task, hparams, generator):
    if task.name != "markov-attention":
        return None
    return from_generator(lambda: Peek(task.config["vocab"], hparams["peek"]), generator)
"""


@pytest.mark.parametrize("peek", [0, 1, 3])
def test_markov_attention_refuses_a_model_that_reads_later_tokens(make_entry, tmp_path, peek):
    """Checked at the model's first forward (Task.model_problem), in one line; before, a
    non-causal MLP-Mixer ran with status ok and a ranked stage time of 2.8 steps."""
    entry = make_entry(f"peek{peek}", code=PEEKING, hparams=f"[hparams.default]\npeek = {peek}\n")
    runs = run(entry, tmp_path, ["markov-attention"], seeds=1)
    if peek == 0:
        assert set(runs["status"]) == {"ok"}
        return
    message = runs["error"].iloc[0]
    assert set(runs["status"]) == {"error"} and "\n" not in message
    assert "the model must map int64 (B, T)" in message and "reads later tokens" in message
    assert "row 0 of its output reads later tokens" in message  # the first cut moves it


def test_every_declared_metric_pattern_names_a_metric_on_every_tier():
    """A pattern in `optional` or `unsupported` that matches nothing is a typo: the metrics it
    meant would be recorded without a reason."""
    for name, cls in registry.all_tasks().items():
        if cls.interface is None:
            continue
        pairs = [*cls.interface.optional, *cls.interface.unsupported]
        for tier, config in cls.tiers.items():
            metrics = list(cls(config).metrics())
            for _, patterns in pairs:
                for pattern in patterns:
                    assert any(fnmatch.fnmatchcase(m, pattern) for m in metrics), (name, tier, pattern)


def test_mode_connectivity_names_why_matching_and_llfc_do_not_apply_to_other_layouts():
    task = registry.make_task("mode-connectivity", "smoke")
    other = torch.nn.Sequential(torch.nn.Linear(task.config["dim"], 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, task.config["classes"]))
    off = task.inapplicable(other)
    assert set(off) == {"loss_barrier/matched", "error_barrier/matched",
                        *(f"{k}/layer_{l}" for l in task.llfc_layers for k in ("llfc", "llfc_baseline"))}
    for metric in off:
        assert "reference layout" in report.na_reason(type(task), metric)
    assert report.na_reason(type(task), "test_error") == "not applicable to this entry's model"


def test_a_third_party_style_model_runs_where_the_task_accepts_it(make_entry, tmp_path):
    """A transformer on modular-addition, not applicable (declared) on the other tasks."""
    entry = make_entry("tiny", code=SMALL_MLP, hparams="")
    runs = run(entry, tmp_path, None, seeds=1, sets=["modular-addition.steps=10", "modular-addition.evals=3"])
    status = runs.drop_duplicates("task").set_index("task")["status"]
    assert status["modular-addition"] == "ok"
    assert set(status.drop("modular-addition")) == {"not-applicable"}


@pytest.mark.parametrize("bad", ["return 3", "return torch.nn.Linear"])
def test_make_model_must_return_a_module(make_entry, tmp_path, bad):
    code = f"import torch\n\ndef make_model(task, hparams, generator):\n    {bad}\n"
    with pytest.raises(Exception, match="not a torch.nn.Module"):
        run(make_entry("bad", code=code, hparams=""), tmp_path, ["modular-addition"], seeds=1)


NORMED_MLP = """
from torch import nn
from suite.init import from_generator

def make_model(task, hparams, generator):
    cfg = task.config
    if task.name != "mode-connectivity":
        return None
    return from_generator(lambda: nn.Sequential(
        nn.Linear(cfg["dim"], 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, cfg["classes"])),
        generator)
"""


def test_mode_connectivity_barriers_for_any_architecture(make_entry, tmp_path):
    """Spawn and independent barriers interpolate by name; weight matching and LLFC, which
    need the reference layout, do not apply to a LayerNorm MLP."""
    sets = ["steps=40", "evals=4", "spawn_steps=[0,10]", "alphas=5"]
    runs = run(make_entry("normed", code=NORMED_MLP, hparams=""), tmp_path, ["mode-connectivity"],
               sets=sets)
    assert set(runs["status"]) == {"ok"}
    off = set(runs.loc[~runs["applicable"], "metric"])
    assert off == {m for m in runs["metric"] if "matched" in m or m.startswith("llfc")}
    spawn = runs[runs["metric"].str.startswith(("loss_barrier/spawn", "loss_barrier/independent"))]
    assert np.isfinite(spawn["value"]).all() and (spawn["value"] >= 0).all()


@pytest.mark.parametrize("layer", ["nn.BatchNorm1d(32)",
                                   "nn.utils.parametrizations.spectral_norm(nn.Linear(32, 32))"])
def test_mode_connectivity_measures_no_barrier_between_models_with_state_buffers(make_entry, tmp_path, layer):
    """Their buffers were interpolated like weights: a spectral-normalised layer's norm rose to
    1.6 midway and the loss barriers grew with the spawn step, the opposite of the phenomenon
    (found by a user). Only test_error, read at the networks themselves, is measured."""
    from suite.metrics.connectivity import barrier
    from suite.tasks.mode_connectivity import path_name
    sets = ["steps=40", "evals=4", "spawn_steps=[0,10]", "alphas=5"]
    code = NORMED_MLP.replace("nn.LayerNorm(32)", layer)
    runs = run(make_entry("stateful", code=code, hparams=""), tmp_path, ["mode-connectivity"], sets=sets)
    assert set(runs["status"]) == {"ok"}
    on = runs[runs["applicable"]]
    assert set(on["metric"]) == {"test_error"} and np.isfinite(on["value"]).all()
    curves = results.read_results(tmp_path / "out")[1]
    seed0 = curves[(curves["seed"] == 0) & curves["metric"].str.startswith("path/independent/error@")]
    end = seed0[seed0["step"] == seed0["step"].max()].set_index("metric")["value"]
    along = [end.get(path_name("independent", "error", a), np.nan) for a in np.linspace(0, 1, 5)]
    assert np.isnan(along[1:-1]).all()  # the points between the networks: not measured (no row)
    assert np.isfinite([along[0], along[-1]]).all()
    assert on.loc[on["seed"] == 0, "value"].iloc[0] == pytest.approx((along[0] + along[-1]) / 2)
    assert np.isnan(barrier(values=along, alphas=np.linspace(0, 1, 5)))


def test_mode_connectivity_measures_barriers_of_models_with_constant_buffers(make_entry, tmp_path):
    """A constant persistent buffer (x-transformers' rotary frequencies) is equal in both
    networks and interpolates to itself: every barrier was marked not applicable."""
    code = NORMED_MLP.replace("from torch import nn\n", """import torch
from torch import nn

class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.register_buffer("factor", torch.linspace(0.5, 1.5, n))  # persistent, constant

    def forward(self, x):
        return x * self.factor
""").replace("nn.LayerNorm(32)", "Scale(32)")
    sets = ["steps=40", "evals=4", "spawn_steps=[0,10]", "alphas=5"]
    runs = run(make_entry("constant", code=code, hparams=""), tmp_path, ["mode-connectivity"], sets=sets)
    assert set(runs["status"]) == {"ok"}
    off = set(runs.loc[~runs["applicable"], "metric"])
    assert off == {m for m in runs["metric"] if "matched" in m or m.startswith("llfc")}
    spawn = runs[runs["metric"].str.startswith(("loss_barrier/spawn", "loss_barrier/independent"))]
    assert np.isfinite(spawn["value"]).all()


# A model whose forward needs its own nn.Parameters: functional_call (a batch's vmapped loss,
# a path's interpolated weights) passes plain tensors, and the forward raises.
OWN_PARAMETERS = NORMED_MLP.replace("from torch import nn\n", """from torch import nn

class Net(nn.Sequential):
    def forward(self, x):
        if not isinstance(self[0].weight, nn.Parameter):
            raise RuntimeError("needs its own parameters")
        return super().forward(x)
""").replace("from_generator(lambda: nn.Sequential(", "from_generator(lambda: Net(")


def test_an_entrys_forward_failing_on_swapped_weights_is_one_line_naming_its_line(make_entry, tmp_path):
    """The batch is refused naming the entry's line (not with ldbench's traceback), the seeds
    train one by one, and the path evaluation's failure is the entry's error, located."""
    entry = make_entry("own", code=OWN_PARAMETERS, hparams="")
    line = next(i for i, text in enumerate(OWN_PARAMETERS.splitlines(), 1) if "raise RuntimeError" in text)
    runs = run(entry, tmp_path, ["mode-connectivity"],
               sets=["steps=40", "evals=4", "spawn_steps=[0,10]", "alphas=5"])
    assert set(runs["status"]) == {"error"}
    where = f"{entry / 'entry.py'}:{line} (forward)"
    failed = f"the entry's model's forward failed at {where}: RuntimeError: needs its own parameters"
    assert set(runs["error"]) == {failed}
    for execution in runs["execution"]:
        assert f"model's forward under torch.func failed at {where}" in execution
        assert "Traceback" not in execution


# A readout that reads a Python attribute of its weight in forward, as muP's MuReadout reads
# `infshape` (set by set_base_shapes): copies of the model (the batch's template, a spawned
# child) and the tensors swapped in (vmap, a path's interpolated weights) must carry it.
ATTRIBUTED = """
import torch
from torch import nn
from suite.init import from_generator

class Readout(nn.Linear):
    def forward(self, x):
        assert hasattr(self.weight, "width_mult"), "call set_width_mult first"
        return super().forward(x) / self.weight.width_mult

class Net(nn.Module):
    def __init__(self, d, classes):
        super().__init__()
        self.hidden, self.readout = nn.Linear(d, 32), Readout(32, classes)

    def features(self, x):
        return torch.relu(self.hidden(x))

    def forward(self, x):
        return self.readout(self.features(x))

def make_model(task, hparams, generator):
    if task.name not in ("mode-connectivity", "fine-grained-collapse"):
        return None
    classes = task.config.get("classes") or task.config["fine_classes"] // 2
    def build():
        net = Net(task.config["dim"], classes)
        net.readout.weight.width_mult = 2.0
        return net
    return from_generator(build, generator)
"""


def test_parameters_keep_their_python_attributes_in_copies_batches_and_paths(make_entry, tmp_path):
    entry = make_entry("attributed", code=ATTRIBUTED, hparams="")
    sets = ["steps=40", "evals=4", "mode-connectivity.spawn_steps=[0,10]", "mode-connectivity.alphas=5"]
    tasks = ["mode-connectivity", "fine-grained-collapse"]
    together = run(entry, tmp_path, tasks, sets=sets)
    alone = run(entry, tmp_path, tasks, sets=sets, seed_batch="1", name="alone")
    assert set(together["status"]) == set(alone["status"]) == {"ok"}
    executions = together.drop_duplicates("task").set_index("task")["execution"]
    assert '"mode": "batched"' in executions["fine-grained-collapse"]
    assert '"networks": "side by side"' in executions["mode-connectivity"]
    np.testing.assert_allclose(values(together), values(alone), rtol=1e-3, atol=1e-5)


FROZEN = NORMED_MLP.replace("    return from_generator(", "    model = from_generator(").replace(
    """        generator)
""", """        generator)
    model[0].requires_grad_(False)  # a fixed random first layer, trained on top of
    return model
""")


def test_a_frozen_layer_trains_one_by_one_with_a_note(make_entry, tmp_path, capsys):
    """Stacked parameters' gradients would cover a frozen layer and the optimizer would move
    it: the batch is refused in one line, and the runs train as --seed-batch 1 trains them
    (both failed with ldbench's traceback in the networks' gradient check). The console says
    so, as for a refused batch of seeds (it was recorded, not said)."""
    entry = make_entry("frozen", code=FROZEN, hparams="")
    sets = ["steps=40", "evals=4", "spawn_steps=[0,10]", "alphas=5"]
    together = run(entry, tmp_path, ["mode-connectivity"], sets=sets)
    assert ("note: mode-connectivity: seeds 0, 1: their networks train one after another, not "
            "batched: BatchingUnsupported: parameter '0.weight' is frozen") in capsys.readouterr().err
    alone = run(entry, tmp_path, ["mode-connectivity"], sets=sets, seed_batch="1", name="alone")
    assert ("note: mode-connectivity: seed 1: its networks train one after another, not batched: "
            "BatchingUnsupported: parameter '0.weight' is frozen") in capsys.readouterr().err
    assert set(together["status"]) == set(alone["status"]) == {"ok"}
    for execution in [*together["execution"], *alone["execution"]]:
        assert '"networks": "one by one"' in execution and "Traceback" not in execution
        assert "BatchingUnsupported: parameter '0.weight' is frozen (requires_grad=False)" in execution
    pd.testing.assert_series_equal(values(together), values(alone), rtol=0, atol=0)


DROPOUT = SMALL_MLP.replace("nn.ReLU(), nn.Linear(64, out)", "nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, out)")


def test_dropout_runs_one_by_one_with_each_networks_own_stream(make_entry, tmp_path):
    """A forward that draws random numbers cannot be one vmapped call: the batch is refused
    with a one-line reason, and the one-by-one numbers equal --seed-batch 1's exactly."""
    entry = make_entry("dropout", code=DROPOUT, hparams="")
    # An explicit size: the reference profile trains modular-addition's seeds one by one anyway.
    tried = run(entry, tmp_path, ["modular-addition"], seeds=2, seed_batch=2, name="tried")
    alone = run(entry, tmp_path, ["modular-addition"], seeds=2, seed_batch=1, name="alone")
    assert all("draws random numbers in its forward" in e for e in tried["execution"])
    pd.testing.assert_series_equal(values(tried), values(alone), rtol=0, atol=0)


BATCHNORM = """
import torch
from torch import nn
from suite.init import from_generator

class Net(nn.Module):
    def __init__(self, d, classes):
        super().__init__()
        self.fc, self.bn = nn.Linear(d, 32), nn.BatchNorm1d(32, momentum=None)
        self.out = nn.Linear(32, classes)

    def features(self, x):
        return torch.relu(self.bn(self.fc(x)))

    def forward(self, x):
        return self.out(self.features(x))

def make_model(task, hparams, generator):
    if task.name != "fine-grained-collapse":
        return None
    return from_generator(lambda: Net(task.config["dim"], task.config["fine_classes"] // 2), generator)
"""


def test_the_interface_probe_leaves_a_models_buffers_as_built(make_entry):
    """The probe forward runs in train mode (as training will); a BatchNorm's running statistics
    must not start training with the probe batch folded in (momentum=None: for the whole run)."""
    from suite.entry import load_entry
    from suite.loop import Trainer
    from suite.profiles import load

    task = registry.make_task("fine-grained-collapse", "smoke")
    trainer = Trainer(task, load_entry(make_entry("bn", code=BATCHNORM, hparams="")), load("cpu-2core"))
    model = trainer.make_model(0, task.make_data(0))
    assert int(model.bn.num_batches_tracked) == 0 and model.training
    assert torch.equal(model.bn.running_mean, torch.zeros(32))
    assert torch.equal(model.bn.running_var, torch.ones(32))


def sdpa_transformer(tmp_path) -> str:
    """baselines/transformer-1l with its attention in torch's fused kernel, which torch.func
    runs seed after seed (no batching rule on the CPU)."""
    folder = tmp_path / "sdpa-1l"
    shutil.copytree(REPO / "baselines" / "transformer-1l", folder,
                    ignore=shutil.ignore_patterns("results"))
    code = (folder / "entry.py").read_text()
    start = code.index('        scores = torch.einsum("bqhe,bkhe->bhqk"')
    end = code.index("\n", code.index('mixed = torch.einsum("bhqk,bkhe->bqhe"'))
    written = code[start:end]  # the einsum attention, from its scores to its mixed values
    fused = '''        mixed = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)),
                                               is_causal=self.causal).transpose(1, 2)
        weights = torch.zeros(B, self.heads, q.shape[1], T)'''
    (folder / "entry.py").write_text(code.replace(written, fused))
    toml = (folder / "entry.toml").read_text()
    (folder / "entry.toml").write_text(toml.replace('name = "transformer-1l"', 'name = "sdpa-1l"'))
    return str(folder)


def torch_loops_fused_attention() -> bool:
    """Whether torch itself warns that vmap loops over its fused CPU attention."""
    q = torch.randn(2, 1, 1, 3, 4)  # (seeds, B, H, T, d_h)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_fx(vmap(lambda x: F.scaled_dot_product_attention(x, x, x)))(q)
    return any("batching rule" in str(w.message) for w in caught)


def test_ops_without_a_batching_rule_are_named_once_not_warned_per_op(tmp_path, recwarn):
    """torch warns in two lines per op that vmap runs in a loop; the runner names them in one
    note, and each run records them. The numbers are those of one by one."""
    entry = sdpa_transformer(tmp_path)
    notes = []
    task = registry.make_task("markov-attention", "smoke", {"steps": 30, "evals": 5})
    plans = [runner.Plan(task, seed, {}) for seed in (0, 1)]
    prof = profiles.load("cpu-2core")
    if not torch_loops_fused_attention():
        pytest.skip("this torch batches its fused CPU attention")
    outcomes = runner.execute_batch(plans, Trainer(task, load_entry(entry), prof), notes=notes.append)
    assert len(notes) == 1 and "no batching rule for aten::_scaled_dot_product" in notes[0]
    assert not [w for w in recwarn if "batching rule" in str(w.message)]
    for plan, (traj, metrics, error) in zip(plans, outcomes, strict=True):
        assert error is None and traj.execution["mode"] == "batched"
        assert traj.execution["looped_ops"][0].startswith("aten::_scaled_dot_product")
        alone, alone_metrics, _ = runner.execute(plan, Trainer(task, load_entry(entry), prof))
        np.testing.assert_allclose(list(metrics.values()), list(alone_metrics.values()),
                                   rtol=1e-4, atol=1e-6)


def test_a_task_that_does_not_apply_records_the_same_execution_batched_or_not(tmp_path):
    """transformer-1l has no model for mode-connectivity (a procedure): its runs record the same
    execution whether the seeds were grouped or run with --seed-batch 1."""
    entry = str(REPO / "baselines" / "transformer-1l")
    runs = {size: runner.run_suite(entry, tasks=["mode-connectivity"], seeds=2, out=tmp_path / str(size),
                                   progress=False, seed_batch=size)
            for size in ("auto", 1)}
    for size, table in runs.items():
        assert set(table["status"]) == {"not-applicable"}, size
    executions = [sorted(t.drop_duplicates("run_id")["execution"]) for t in runs.values()]
    assert executions[0] == executions[1]


CACHED = SMALL_MLP.replace('''def make_model(task, hparams, generator):
    if task.name != "modular-addition":
        return None
    p = task.config["p"]
    return''', '''BUILT = {}

def make_model(task, hparams, generator):
    if task.name != "modular-addition":
        return None
    p = task.config["p"]
    if "net" in BUILT:  # "build once": every seed would train one set of weights
        return BUILT["net"]
    BUILT["net"] =''') + "    return BUILT['net']\n"


@pytest.mark.parametrize("seed_batch", ["2", "1"])
def test_a_model_returned_twice_is_refused(make_entry, tmp_path, seed_batch):
    """A cached model: batched, both seeds stepped one set of tensors; one by one, seed 1
    started from seed 0's trained weights. Both without a word."""
    # code of its own per case: entry modules are loaded once per content (an earlier case's
    # cache would already hold a model)
    runs = run(make_entry("cached", code=CACHED + f"# case {seed_batch}\n", hparams=""), tmp_path,
               ["modular-addition"], seed_batch=seed_batch)
    failed = runs[runs["status"] == "error"]
    assert set(failed["seed"]) == ({0, 1} if seed_batch == "2" else {1})
    message = failed["error"].iloc[0]
    assert "make_model returned a model whose parameter 'embed.weight' is one it returned before" in message
    assert "build new tensors on every call" in message and "\n" not in message


@pytest.mark.parametrize("task, code", [
    ("modular-addition", SMALL_MLP.replace("out = self.mlp(self.embed(pairs).flatten(1))",
                                           "out = self.mlp(self.embed(pairs.clamp_(0, 10**6)).flatten(1))")),
    ("fine-grained-collapse", REFERENCE.replace(
        "    return task.reference_model(generator)",
        "    model = task.reference_model(generator)\n"
        "    features = model.features\n"
        "    model.features = lambda x: features(x.div_(x.norm(dim=1, keepdim=True)))\n"
        "    return model")),
])
def test_a_model_writing_to_its_input_in_place_is_refused(make_entry, tmp_path, task, code):
    """features() normalising its input in place changed fine-grained-collapse's stored data:
    input_recovery, which clusters the raw inputs, moved from 0.56 to 0.76 (found by a user)."""
    runs = run(make_entry("inplace", code=code, hparams=""), tmp_path, [task], seeds=1)
    assert set(runs["status"]) == {"error"}
    message = runs["error"].iloc[0]
    assert "entry.py: the model wrote to the task's data tensor" in message
    assert "compute out of place" in message and "\n" not in message


def test_a_model_left_on_the_meta_device_is_one_line(make_entry, tmp_path):
    """Built with device='meta' (as the README suggests) and to_empty() forgotten: torch's error
    from the harness's own .to() was a traceback pointing at ldbench."""
    code = SMALL_MLP.replace("    return from_generator(lambda: Net(", "    with torch.device('meta'):\n"
                             "        return Net(").replace('''hparams.get("double", False)),
                          generator)''', '''hparams.get("double", False))''')
    assert "torch.device('meta')" in code and "from_generator(" not in code.split("def make_model")[1]
    runs = run(make_entry("meta", code=code, hparams=""), tmp_path, ["modular-addition"], seeds=1)
    assert set(runs["status"]) == {"error"}
    message = runs["error"].iloc[0]
    assert "make_model returned a model whose 'embed.weight' is on the meta device" in message
    assert ".to_empty(device='cpu')" in message and "\n" not in message


POSITIONAL = """
import torch
from torch import nn
from suite.init import from_generator

class Net(nn.Module):
    def __init__(self, d, positions):
        super().__init__()
        self.pos = nn.Embedding(positions, d + 1)  # one row per position of a training prompt
        self.out = nn.Linear(d + 1, 1)

    def forward(self, tokens):
        h = tokens + self.pos(torch.arange(tokens.shape[1]))
        return self.out(h.mean(1))[:, 0]

def make_model(task, hparams, generator):
    if task.name != "in-context-regression":
        return None
    cfg = task.config
    return from_generator(lambda: Net(cfg["dim"], cfg["context"] + 1), generator)
"""


def test_a_model_sized_to_the_training_length_fails_at_its_first_forward_saying_why(make_entry, tmp_path):
    """Evaluation feeds prompts of 2n and 4n pairs: the model failed there, with an IndexError
    and nothing saying the length varies (found by a user)."""
    runs = run(make_entry("positional", code=POSITIONAL, hparams=""), tmp_path, ["in-context-regression"],
               seeds=1)
    assert set(runs["status"]) == {"error"}
    message = runs["error"].iloc[0]
    n = registry.make_task("in-context-regression", "smoke").config["context"]
    assert "IndexError" in message and "(forward)" in message
    assert f"the first forward, on in-context-regression's input of shape (4, {4 * n + 1}, " in message
    assert "L varies: n + 1 in training, n + 1, 2n + 1 and 4n + 1 at evaluation" in message


PRETRAINED = """
import torch
from torch import nn
from suite.init import from_generator

TABLE = torch.randn(59, 16, generator=torch.Generator().manual_seed(0))  # loaded once{marker}

class Net(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(TABLE, freeze={freeze})  # TABLE's storage
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, p))

    def forward(self, pairs):
        return self.mlp(self.embed(pairs).flatten(1))

def make_model(task, hparams, generator):
    if task.name != "modular-addition":
        return None
    return from_generator(lambda: Net(task.config["p"]), generator)
"""


@pytest.mark.parametrize("seed_batch", ["2", "1"])
def test_a_cached_tensor_trained_by_every_seed_is_refused_and_a_frozen_shared_one_allowed(
        make_entry, tmp_path, seed_batch):
    """Embedding.from_pretrained(CACHED, freeze=False) makes new Parameters over one storage:
    one by one, seed 1 started from the embedding seed 0 had trained (found by a review). A
    frozen shared module trains nothing, and is allowed."""
    code = PRETRAINED.format(marker=f"  # {seed_batch}", freeze="False")
    runs = run(make_entry("pretrained", code=code, hparams=""), tmp_path, ["modular-addition"],
               seed_batch=seed_batch)
    failed = runs[runs["status"] == "error"]
    # one by one, the seed after the first; batched, whichever seed's model is built second
    # (the refused batch's seeds are then retried alone, its models still alive)
    assert set(failed["seed"]) == {1} if seed_batch == "1" else len(set(failed["seed"])) >= 1
    assert "parameter 'embed.weight' is one it returned before" in failed["error"].iloc[0]
    frozen = PRETRAINED.format(marker=f"  # frozen {seed_batch}", freeze="True")
    runs = run(make_entry("frozen-table", code=frozen, hparams=""), tmp_path, ["modular-addition"],
               seed_batch=seed_batch, name="frozen")
    assert set(runs["status"]) == {"ok"}


def test_a_write_to_the_data_during_the_first_forward_is_refused(make_entry, tmp_path):
    """The interface probe feeds a view of the task's data in train mode: a forward writing to
    its input there changed the stored data before the check started counting."""
    code = NORMED_MLP.replace("from torch import nn\n", """from torch import nn

class Net(nn.Sequential):
    def forward(self, x):
        if self.training and len(x) == 8:  # the probe's batch only
            x.mul_(2.0)
        return super().forward(x)
""").replace("from_generator(lambda: nn.Sequential(", "from_generator(lambda: Net(")
    runs = run(make_entry("probe-writer", code=code, hparams=""), tmp_path, ["mode-connectivity"],
               sets=["steps=20", "evals=4", "spawn_steps=[0,10]", "alphas=5"], seeds=1)
    assert set(runs["status"]) == {"error"}
    assert "wrote to the task's data tensor 'x_train' in place" in runs["error"].iloc[0]


def test_a_parameter_training_never_moved_does_not_count_as_trained():
    """A parameter that gets no gradient keeps its initial values; a fresh build of the same
    seed, which the allocator may place at the same address, holds them too, and was refused
    as "lies where one trained before" (found by a user; here the same tensors stand in for
    the rebuilt ones)."""
    from suite import reuse
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    reuse.record_built(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # trained; model[1] got no gradient
    reuse.record_trained(model)
    assert reuse.trained_before(model) == "0.weight"
    with torch.no_grad():
        model[0].weight.sub_(1.0)  # as freshly built again
    assert reuse.trained_before(model) is None
