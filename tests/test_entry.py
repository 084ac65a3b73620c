"""Entry loading: every broken entry gets an error naming the file and the fix."""

from pathlib import Path

import pytest

from suite.entry import EntryError, entry_code_error, entry_hash, load_entry
from suite.registry import make_task


def test_baselines_load():
    for name in ("sgd", "momentum", "adam", "adamw"):
        entry = load_entry(f"baselines/{name}")
        assert entry.name == name
        assert "lr" in entry.hparams_for("deep-linear-modes")


def test_task_table_overrides_default(make_entry):
    entry = load_entry(make_entry(hparams="[hparams.default]\nlr = 0.1\n"
                                          "[hparams.deep-linear-modes]\nlr = 0.5\n"))
    assert entry.hparams_for("deep-linear-modes") == {"lr": 0.5}
    assert entry.hparams_for("shared-representation") == {"lr": 0.1}


@pytest.mark.parametrize("mutate, message", [
    (lambda p: (p / "entry.toml").unlink(), "entry.toml: is missing"),
    (lambda p: (p / "entry.py").unlink(), "entry.py: is missing"),
    (lambda p: (p / "entry.toml").write_text("name = \n"), "is not valid TOML"),
    (lambda p: (p / "entry.toml").write_text('name = "x"\n'), "lacks the field 'version'"),
])
def test_broken_entry_files(make_entry, mutate, message):
    folder = make_entry()
    mutate(folder)
    with pytest.raises(EntryError, match=message):
        load_entry(folder)


def test_unknown_task_table_suggests_the_right_name(make_entry):
    folder = make_entry(hparams="[hparams.deep-linaer-modes]\nlr = 0.1\n")
    with pytest.raises(EntryError, match="did you mean 'deep-linear-modes'"):
        load_entry(folder)


def test_bad_name_and_unknown_field(make_entry):
    with pytest.raises(EntryError, match="is not allowed"):
        load_entry(make_entry(name="Bad Name!"))
    with pytest.raises(EntryError, match="unknown field 'autors'"):
        load_entry(make_entry(extra='autors = ["x"]'))


def test_every_field_problem_of_a_manifest_is_said_at_once(make_entry):
    """A manifest with three misspelt fields took three rounds of `validate`, and a misspelt
    required field was said as "lacks 'authors'" first, "unknown 'autors'" next."""
    folder = make_entry()
    (folder / "entry.toml").write_text('name = "x"\nversion = 1\nautors = ["A"]\ndescription = "d"\n'
                                       'requirement = ["torch"]\nhomepage = 3\n[hparam.default]\nlr = 0.1\n')
    with pytest.raises(EntryError) as err:
        load_entry(folder)
    assert str(err.value) == (
        f"{folder / 'entry.toml'}: field 'autors' should be 'authors' (rename it); field 'requirement' "
        "should be 'requirements' (rename it); field 'hparam' should be 'hparams' (rename it); field "
        "'homepage' has type int, not str")


def test_missing_make_optimizer(make_entry):
    entry = load_entry(make_entry(code="def make_optimiser(params, hparams, task):\n    pass\n"))
    task = make_task("deep-linear-modes", "smoke")
    with pytest.raises(EntryError, match="defines neither make_optimizer nor make_model"):
        entry.make_optimizer(task.make_model(0), task.view())


def test_entry_code_that_fails_to_import(make_entry):
    entry = load_entry(make_entry(code="import not_a_module_anywhere\n"))
    task = make_task("deep-linear-modes", "smoke")
    with pytest.raises(EntryError, match="failed to import.*ModuleNotFoundError"):
        entry.make_optimizer(task.make_model(0), task.view())


def test_a_vendored_module_beside_entry_py_is_named_with_how_to_load_it(make_entry):
    """efficient-kan is not on PyPI: its kan.py beside entry.py, imported by name, was met with
    'pip install the package it comes from'."""
    folder = make_entry(code="from kan import KAN\n\ndef make_model(task, hparams, generator):\n    pass\n")
    (folder / "kan.py").write_text("class KAN:\n    pass\n")
    entry = load_entry(folder)
    task = make_task("deep-linear-modes", "smoke")
    with pytest.raises(EntryError) as caught:
        entry.make_model(task, None)
    said = str(caught.value)
    assert said.startswith(f"{folder / 'entry.py'}: failed to import (ModuleNotFoundError: No module "
                           "named 'kan')")
    assert "'kan' is in the entry's folder, which is not on Python's import path" in said
    assert "spec_from_file_location" in said and "pip install" not in said


def test_make_optimizer_must_return_an_optimizer(make_entry):
    entry = load_entry(make_entry(code="def make_optimizer(params, hparams, task):\n"
                                       "    return 'adam'\n"))
    task = make_task("deep-linear-modes", "smoke")
    with pytest.raises(EntryError, match="returned str, not a torch.optim.Optimizer"):
        entry.make_optimizer(task.make_model(0), task.view())


def test_hash_covers_code_but_not_results(make_entry):
    folder = make_entry()
    before = entry_hash(folder)
    (folder / "results").mkdir()
    (folder / "results" / "runs.parquet").write_bytes(b"anything")
    assert entry_hash(folder) == before
    (folder / "entry.py").write_text((folder / "entry.py").read_text() + "\n# changed\n")
    assert entry_hash(folder) != before


def test_entry_files_are_those_rglob_finds_outside_results_and_caches(tmp_path):
    """The hashed files, listed without walking results/ (thousands of files): the same list as
    Path.rglob filtered afterwards, with hidden files, spaces, symlinks and a FIFO around."""
    import os

    from suite.entry import HASH_EXCLUDE, entry_files

    for rel, text in [("entry.py", "e"), ("B.py", "b"), (".hidden", "h"), ("a/.h2/z", "z"), ("a/b/c.py", "c"),
                      ("a/b/results/x.py", "x"), ("a/__pycache__/y.pyc", "y"), ("results/r.parquet", "r"),
                      ("a b/q", "q"), ("a-b", "q")]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    os.symlink(tmp_path / "a", tmp_path / "linkdir")
    os.symlink(tmp_path / "entry.py", tmp_path / "linkfile")
    os.symlink(tmp_path / "missing", tmp_path / "broken")
    os.mkfifo(tmp_path / "fifo")
    expected = [p for p in sorted(tmp_path.rglob("*"))
                if not any(part in HASH_EXCLUDE for part in p.relative_to(tmp_path).parts) and p.is_file()]
    assert entry_files(tmp_path) == expected
    assert [p.relative_to(tmp_path).as_posix() for p in expected] == [
        ".hidden", "B.py", "a/.h2/z", "a/b/c.py", "a b/q", "a-b", "entry.py", "linkfile"]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "[0.9, inf]", "{ clip = nan }"])
def test_a_hyperparameter_json_cannot_hold_is_refused_when_the_entry_loads(make_entry, value):
    """Every run records its hyperparameters as JSON (and a study's tuned.json is strict JSON):
    NaN and infinities would be written as non-JSON or crash the study at its end."""
    folder = make_entry(hparams=f"[hparams.default]\nlr = 0.01\nclip = {value}\n")
    with pytest.raises(EntryError, match=r"entry.toml: hparams.default.clip = .* is not a finite number; "
                                         r"every run records its hyperparameters as JSON"):
        load_entry(folder)


@pytest.mark.parametrize("space", ["{ uniform = [0, inf] }", "{ choice = [0.1, nan] }",
                                   "{ log_uniform = [1e-3, inf] }"])
def test_a_search_space_json_cannot_hold_is_refused(make_entry, space):
    folder = make_entry(hparams=f"[hparams.default]\nlr = 0.01\n\n[search.default]\nlr = {space}\n")
    with pytest.raises(EntryError, match=r"search.default.lr: \w+ holds NaN or an infinity"):
        load_entry(folder)


def test_a_hyperparameter_override_json_cannot_hold_is_refused(make_entry):
    from suite.entry import split_hparams
    entry = load_entry(make_entry(hparams="[hparams.default]\nlr = 0.01\n"))
    with pytest.raises(EntryError, match="--hparam lr=inf: not a finite number"):
        split_hparams(["lr=inf"], entry, ["deep-linear-modes"])


def test_a_library_optimizer_failing_inside_torch_is_named_at_its_own_line(make_entry, tmp_path):
    """pytorch_optimizer's GSAM unpacks its closure's loss as (outputs, loss): the error is
    raised in torch's Tensor.__iter__, but the line to read is the library's."""
    import importlib.util

    library = tmp_path / "lib" / "thirdparty.py"
    library.parent.mkdir()
    library.write_text("import torch\n\ndef step(closure):\n    outputs, loss = closure()\n")
    spec = importlib.util.spec_from_file_location("thirdparty", library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    with pytest.raises(TypeError) as caught:
        module.step(lambda: torch.tensor(1.0))
    message = str(entry_code_error(caught.value, load_entry(make_entry()), "optimizer.step"))
    assert message.startswith(f"the entry's optimizer.step failed at {library}:4 (step): TypeError: ")


@pytest.mark.parametrize(("schedule", "said"), [
    ("Linear(optimizer)", "make_schedule returned Linear, which is not a torch.optim.lr_scheduler"
                          ".LRScheduler (the harness steps it once after every optimizer step); return one, "
                          "e.g. torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor)"),
    ("torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1)], lr=1.0), 5)",
     "make_schedule returned a StepLR of another optimizer than the one it was given; build it on its "
     "`optimizer` argument"),
    ("torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)",
     "make_schedule returned ReduceLROnPlateau, whose step needs a metric; the harness steps the "
     "schedule once after every optimizer step, without one: return a schedule of the step count, e.g. "
     "LambdaLR(optimizer, lambda step: factor)"),
])
def test_a_schedule_the_harness_cannot_step_is_refused_saying_why(make_entry, schedule, said):
    """pytorch_optimizer's own schedulers are not LRSchedulers (the message said 'StepLR, not an
    LRScheduler' for both mistakes)."""
    code = ("import torch\n\nclass Linear:\n    def __init__(self, optimizer):\n"
            "        self.optimizer = optimizer\n\n    def step(self):\n        pass\n\n"
            "def make_optimizer(params, hparams, task):\n"
            "    return torch.optim.SGD(params, lr=hparams['lr'])\n\n"
            f"def make_schedule(optimizer, hparams, task):\n    return {schedule}\n")
    entry = load_entry(make_entry(code=code))
    task = make_task("deep-linear-modes", "smoke")
    import torch

    optimizer = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    with pytest.raises(EntryError) as caught:
        entry.make_schedule(optimizer, task.view())
    assert str(caught.value) == f"{entry.path / 'entry.py'}: {said}"


def test_a_schedule_failing_in_its_step_is_named_with_the_fix_not_at_ldbenchs_line(make_entry):
    """OneCycleLR built for one step fewer than the task has failed at its last step, and the
    message named suite/loop.py (the harness's call of schedule.step) as where it failed."""
    import torch

    from suite import profiles
    from suite.entry import EntryCodeError
    from suite.loop import Trainer

    code = ("import torch\n\ndef make_optimizer(params, hparams, task):\n"
            "    return torch.optim.SGD(params, lr=0.01)\n\n"
            "def make_schedule(optimizer, hparams, task):\n"
            "    return torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.01, total_steps=task.steps - 1)\n")
    task = make_task("deep-linear-modes", "smoke", {"steps": 6, "evals": 2})
    trainer = Trainer(task, load_entry(make_entry(code=code)), profiles.load("cpu-2core"))
    model = task.make_model(0)
    optimizer, schedule = trainer.make_optimizer(model, seed=0)
    with pytest.raises(EntryCodeError) as caught:
        trainer.train(model, optimizer, task.make_data(0), seed=0, steps=6, schedule=schedule)
    said = str(caught.value)
    scheduler_file = Path(torch.optim.lr_scheduler.__file__)
    assert said.startswith(f"the entry's schedule.step failed at {scheduler_file}:")
    assert "Tried to step 6 times" in said and said.endswith(
        "; the harness steps the schedule once after every optimizer step, task.steps times in all: "
        "build it for that many (e.g. total_steps=task.steps)")


def test_a_boolean_where_the_optimizer_takes_a_number_is_refused(make_entry):
    """`lr = true` reached SGD as lr = 1 (bool is an int) and trained; booleans the optimizer
    takes as booleans (nesterov) pass."""
    import torch

    task = make_task("deep-linear-modes", "smoke")
    model = torch.nn.Linear(2, 2)
    entry = load_entry(make_entry(hparams="[hparams.default]\nlr = true\n"))
    with pytest.raises(EntryError) as caught:
        entry.make_optimizer(model, task.view())
    assert str(caught.value) == (f"{entry.path / 'entry.toml'}: SGD got lr = true, a boolean, where it "
                                 "takes a number (its default is 0.001), and trains with lr = 1; write the "
                                 "number (e.g. lr = 0.001)")
    code = ("import torch\n\ndef make_optimizer(params, hparams, task):\n"
            "    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=hparams['nesterov'])\n")
    fine = load_entry(make_entry("fine", code=code, hparams="[hparams.default]\nnesterov = true\n"))
    assert fine.make_optimizer(model, task.view()).param_groups[0]["nesterov"] is True
