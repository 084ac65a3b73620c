"""The `ldbench` command line: list tasks, run an entry, show results."""

from __future__ import annotations

import json
import math
import secrets
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import click
from tabulate import tabulate

from suite import registry, report, results, runner, validate, verify
from suite import score as score_mod
from suite.entry import EntryError, load_entry
from suite.profiles import ProfileError
from suite.task import ConfigError

USER_ERRORS = (EntryError, ProfileError, registry.RegistryError, results.ResultsError, ConfigError)


class UserError(click.ClickException):
    """Bad input (entry, profile, task, config, results): one red line `error: ...`, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.secho(f"error: {self.format_message()}", fg="red", err=True)


class Group(click.Group):
    """Turns ldbench's input errors, raised by any command below it, into UserError; every other
    exception is a bug of ldbench and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            raise UserError(str(err)) from err


def cluster_options(func):
    """--workers, --scheduler and --time-limit: Dask execution (suite/cluster.py), issue 12."""
    for option in reversed([
        click.option("--workers", default=None, type=click.IntRange(0), metavar="N",
                     help="Run on a Dask LocalCluster of N worker processes (0: in this process; "
                          "default: the profile's workers)."),
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Run on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786)."),
        click.option("--time-limit", default=None, type=click.FloatRange(min=0, min_open=True),
                     metavar="SECONDS", help="Per-run limit (N seeds trained together get N times as "
                     "long); a run past it is recorded as 'timeout', and `ldbench verify` leaves "
                     "it out."),
    ]):
        func = option(func)
    return func


@click.group(cls=Group)
@click.version_option(package_name="ldbench")
def main() -> None:
    """ldbench: a benchmark suite for the learning dynamics of neural networks."""


def optimizer_text(optimizer: tuple[str, tuple]) -> str:
    """('sgd', (('lr', 0.07), ('momentum', 0.9))) as 'SGD lr 0.07, momentum 0.9'."""
    name, kwargs = optimizer
    shown = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}.get(name, name)
    return f"{shown} " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in kwargs)


@main.command()
def tasks() -> None:
    """List the tasks with their version, family, tiers and metrics."""
    rows = []
    for name, cls in registry.all_tasks().items():
        metrics = cls(cls.tiers["standard"]).metrics()
        listed = ", ".join(f"{m} {report.ARROWS[spec.direction]}" for m, spec in metrics.items())
        tiers = " / ".join(f"{t}: {cls.tiers[t]['steps']} steps" for t in registry.TIERS)
        face = cls.interface
        model = (f"{face.inputs} → {face.outputs}" + (f"; needs {', '.join(face.requires)}()"
                                                       if face.requires else "")
                 + f"; reference optimizer {optimizer_text(face.optimizer)}"
                 if face else "optimizer-only")
        rows.append([name, cls.version, cls.family, tiers, model, listed])
    click.echo(tabulate(rows, headers=["task", "version", "family", "tiers", "model interface",
                                       "metrics"],
                        tablefmt="simple", maxcolwidths=[None, None, None, 22, 36, 60]))


@main.command()
@click.argument("entry_dir", type=click.Path(file_okay=False))
@click.option("--tasks", "task_list", default="", help="Comma-separated task names (default: all).")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(1), help="Seeds 0..N-1.")
@click.option("--tier", default="smoke", show_default=True, type=click.Choice(registry.TIERS))
@click.option("--profile", default="cpu-2core", show_default=True, help="Hardware profile.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a tier config value (task.key=value for one task). Repeatable.")
@click.option("--hparam", "hparams", multiple=True, metavar="KEY=VALUE",
              help="Override one of the entry's hyperparameters (task.key=value for one task). "
                   "Repeatable. Recorded with each run; the leaderboard takes no such runs.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Results folder (default: ENTRY_DIR/results/PROFILE/TIER).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--seed-batch", default="auto", show_default=True, metavar="auto|1|N",
              help="Train the seeds of a task as one batched computation: auto = all of them "
                   "(except the tasks the profile lists as unbatched, measured faster one by "
                   "one there), N = up to N at a time, 1 = one by one. A task with its own procedure "
                   "batches only if it implements Task.run_seeds (mode-connectivity does).")
@cluster_options
def run(entry_dir, task_list, seeds, tier, profile, sets, hparams, out, quiet, seed_batch,
        workers, scheduler, time_limit) -> None:
    """Run ENTRY_DIR on the suite, write Parquet results and print a summary table."""
    names = [t.strip() for t in task_list.split(",") if t.strip()] or None
    name = load_entry(entry_dir).name
    if Path(entry_dir).resolve().name != name:  # validate refuses it: say so before the runs
        click.secho(f"note: {Path(entry_dir) / 'entry.toml'} names the entry {name!r} but its folder is "
                    f"{Path(entry_dir).resolve().name!r}; `ldbench validate` refuses that: rename one",
                    fg="yellow", err=True)
    runs = runner.run_suite(entry_dir, tasks=names, seeds=seeds, tier=tier, profile=profile,
                            sets=list(sets), hparams=list(hparams), out=out,
                            progress=not quiet, seed_batch=seed_batch, workers=workers,
                            scheduler=scheduler, time_limit=time_limit)
    click.echo(report.render(runs))
    errors = runs[runs["status"] == "error"].drop_duplicates("run_id")
    for line in report.failure_lines(errors):
        click.secho(line, fg="red", err=True)
    if len(errors):
        sys.exit(1)


@main.command()
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="simple", show_default=True,
              help="tabulate table format (simple, github, ...).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="A study only: SVG of each task's target against each hyperparameter.")
def show(results_dir, fmt, plot_path) -> None:
    """Print the summary table of the results under RESULTS_DIR (a study: its trials too)."""
    from suite import tune

    if tune.is_study(results_dir):
        click.echo(render_study(Path(results_dir), fmt))
        if plot_path:
            click.echo(f"wrote {tune.plot(Path(results_dir), plot_path)}")
        return
    runs, _ = results.read_results(results_dir)
    folder = report.entry_folder(results_dir)  # known: runs of older entry files are marked stale
    current = None
    if folder is not None:
        entry = load_entry(folder)
        current = {entry.name: entry.hash}
    click.echo(report.render(runs, fmt=fmt, current=current))


@main.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--tier", default="standard", show_default=True, type=click.Choice(registry.TIERS),
              help="The tier whose results must be complete.")
@click.option("--min-seeds", default=validate.MIN_SEEDS, show_default=True, type=click.IntRange(1),
              help="Distinct seeds required per task.")
@click.option("--manifest-only", is_flag=True,
              help="Check files and manifests only (entries whose results are not committed yet).")
@click.option("--complete", is_flag=True,
              help="Also fail when a task has no results (by default such an entry is incomplete: "
                   "valid, with a note naming the command that fills it).")
def validate_cmd(paths, tier, min_seeds, manifest_only, complete) -> None:
    """Check submissions (or baselines) without running their code; exit 1 on any problem."""
    failed = 0
    for path in paths:
        incomplete: list[str] | None = None if complete else []
        problems = validate.validate_submission(path, tier=tier, min_seeds=min_seeds,
                                                check_results=not manifest_only, incomplete=incomplete)
        for problem in problems:
            click.secho(f"error: {problem}", fg="red", err=True)
        for note in incomplete or []:
            click.secho(f"incomplete: {note}", fg="yellow", err=True)
        if problems:
            failed += 1
        else:
            click.echo(f"ok: {path}" + (f" (incomplete: {len(incomplete)} tasks without results)"
                                        if incomplete else ""))
    if failed:
        click.secho(f"{failed} of {len(paths)} entries have problems", fg="red", err=True)
        sys.exit(1)


@main.command("verify")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--runs", "k", default=2, show_default=True, type=click.IntRange(1),
              help="How many randomly chosen runs to reproduce.")
@click.option("--tier", default="standard", show_default=True, type=click.Choice(registry.TIERS))
@click.option("--profile", default="cpu-2core", show_default=True, help="This machine's profile.")
@click.option("--pick-seed", default=None, type=int, help="Seed of the random choice (default: fresh).")
@click.option("--rtol", default=verify.RTOL, show_default=True, help="Relative tolerance.")
@click.option("--exact", is_flag=True,
              help="Bit for bit: every value must equal the submitted one (NaN equals NaN), with no "
                   "tolerance and no metric's resolution (what a re-run on the same kind of machine "
                   "and profile gives).")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0),
              help="Re-run on a local Dask cluster of N worker processes (0: in this process).")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler to use.")
@click.option("--results", "results_dir", default=None, type=click.Path(file_okay=False),
              help="The runs to verify, where `ldbench run --out` wrote them (default: "
                   "PATH/results/PROFILE/TIER).")
def verify_cmd(path, k, tier, profile, pick_seed, rtol, exact, workers, scheduler, results_dir) -> None:
    """Re-run K random runs of PATH here and compare metrics. EXECUTES the entry's code."""
    if pick_seed is None:
        pick_seed = secrets.randbelow(2**31)
    tolerance = ("bit for bit" if exact else f"tolerance |a - b| <= max(the metric's resolution, "
                                             f"{verify.ATOL:g} + {rtol:g}·|a|)")
    click.echo(f"re-running up to {k} runs of {path} ({profile}, {tier}), chosen with --pick-seed "
               f"{pick_seed}; {tolerance}")
    for change in verify.profile_changes(path, tier=tier, profile=profile, results_dir=results_dir):
        click.echo(f"note: {change}")
    checks = verify.verify_submission(path, k=k, tier=tier, profile=profile, pick_seed=pick_seed,
                                      workers=workers, scheduler=scheduler, results_dir=results_dir,
                                      notes=lambda line: click.echo(f"note: {line}"))
    matches = {id(c): c.identical() if exact else c.matches(rtol=rtol) for c in checks}
    bad = [c for c in checks if not matches[id(c)]]
    rows = [[c.task, c.seed, c.metric, c.submitted_status, c.reproduced_status, c.submitted,
             c.reproduced, "ok" if matches[id(c)] else "MISMATCH"] for c in checks]
    click.echo(tabulate(rows, headers=["task", "seed", "metric", "status", "rerun status",
                                       "submitted", "reproduced", ""], tablefmt="simple"))
    if bad:
        beyond = "" if exact else " beyond the tolerance"
        click.secho(f"error: {path}: {len(bad)} of {len(checks)} metrics and curves differ from the "
                    f"submitted results{beyond}; rerun `ldbench run` on this profile and resubmit",
                    fg="red", err=True)
        sys.exit(1)
    # NaN on both sides (a metric not applicable, undefined, or a failed run's) is reproduced,
    # but no number was compared: say how many were.
    compared = sum(not (math.isnan(c.submitted) and math.isnan(c.reproduced)) for c in checks)
    curves = sum(c.metric.startswith("curve ") for c in checks)
    click.echo(f"ok: {len(checks) - curves} metrics and {curves} curves reproduced"
               f"{' bit for bit' if exact else ''} ({compared} values, {len(checks) - compared} "
               "without a value on both sides)")


def leaderboard_options(func):
    """--tier, --root and --out, shared by `score` and `leaderboard build|check`."""
    for option in reversed([
        click.option("--tier", default="standard", show_default=True,
                     type=click.Choice(registry.TIERS)),
        click.option("--root", "roots", multiple=True, default=score_mod.ROOTS, show_default=True,
                     help="Folders of entry folders. Repeatable."),
        click.option("--out", default="leaderboard", show_default=True,
                     type=click.Path(file_okay=False)),
        click.option("--tuned", default=None, type=click.IntRange(1), metavar="BUDGET",
                     help="The tuned view: each entry's `ldbench tune` study at this budget "
                          "(studies/ENTRY/PROFILE/TIER/budget-N) instead of its results; "
                          "written to OUT/tuned-budget-N."),
    ]):
        func = option(func)
    return func


def view(roots, tier: str, out: str, tuned: int | None) -> tuple[score_mod.Inputs, Path]:
    """The inputs and output folder of the leaderboard, or of its tuned view at a budget."""
    inputs = score_mod.collect(list(roots), tier=tier, budget=tuned)
    return inputs, Path(out) / f"tuned-budget-{tuned}" if tuned else Path(out)


@main.command("score")
@leaderboard_options
def score_cmd(tier, roots, out, tuned) -> None:
    """Score every entry under the roots; write OUT/scores.parquet. Runs no entry code."""
    inputs, out = view(roots, tier, out, tuned)
    for note in inputs.warnings:
        click.secho(f"warning: {note}", fg="yellow", err=True)
    table = score_mod.score(inputs)
    path = Path(out) / score_mod.SCORES_FILE
    score_mod.write_scores(table, path, inputs.digest)
    score_mod.write_inputs(inputs, Path(out) / score_mod.INPUTS_FILE)  # for `leaderboard build`
    overall = table[table["level"] == "overall"].sort_values(["profile", "track", "rank", "entry"])
    rows = [[r.profile, r.track + " (recipe)" * bool(r.recipe),
             int(r.rank) if r.complete else "incomplete",  # incomplete entries are not ranked
             r.entry, f"{r.score:.3f}", f"{int(r.solved)}/{int(r.tasks)}"]
            for r in overall.itertuples()]
    click.echo(tabulate(rows, headers=["profile", "track", "rank", "entry", "score", "solved"],
                        tablefmt="simple", disable_numparse=True))
    scored = table["entry"].nunique() if len(table) else 0
    if not scored:  # an empty leaderboard is written, but it is unlikely to be what was meant
        fix = (f"no entry under {', '.join(roots)} has a study at budget {tuned} ({tier} tier); "
               f"`ldbench tune ENTRY --budget {tuned} --tier {tier} --seeds 5` makes one" if tuned else
               f"no entry under {', '.join(roots)} has {tier}-tier results; "
               f"`ldbench run ENTRY --tier {tier} --seeds 5` makes them")
        click.secho(f"warning: {fix}", fg="yellow", err=True)
    click.echo(f"wrote {path} ({scored} entries, {len(table)} rows)")


@main.group()
def leaderboard() -> None:
    """Build or check the static leaderboard site."""


@leaderboard.command("build")
@leaderboard_options
def leaderboard_build(tier, roots, out, tuned) -> None:
    """Write OUT/index.html, entry pages, plots and OUT/README.md from OUT/scores.parquet."""
    from suite.site import build  # matplotlib is imported only for this command

    out = Path(out) / f"tuned-budget-{tuned}" if tuned else Path(out)
    scores, inputs = score_mod.scored_inputs(list(roots), out, tier=tier, budget=tuned)
    files = build.build(inputs, scores, out, warn=lambda note: click.secho(f"warning: {note}", fg="yellow",
                                                                           err=True))
    click.echo(f"wrote {len(files)} files to {out}/ (open {Path(out) / 'index.html'})")


@leaderboard.command("check")
@leaderboard_options
def leaderboard_check(tier, roots, out, tuned) -> None:
    """Fail when the built leaderboard in OUT is not what `score` and `leaderboard build` would
    write now: its inputs' digest is stale, or a rebuild differs (results or code changed).
    Runs no entry code."""
    rebuild = (f"ldbench score --tier {tier} --tuned {tuned} && ldbench leaderboard build "
               f"--tier {tier} --tuned {tuned}" if tuned else "ldbench score && ldbench leaderboard build")
    if tuned:
        inputs, out = view(roots, tier, out, tuned)
        path = out / score_mod.SCORES_FILE
        scores, digest = score_mod.read_scores(path) if path.is_file() else (None, "")
        if digest != inputs.digest:
            fail(f"{out}/ is stale or missing; run `{rebuild}`")
        stale = rebuilt_differences(inputs, scores, out)
    else:
        if not score_mod.has_results(list(roots), tier):
            click.echo(f"no committed {tier}-tier results under {', '.join(roots)} yet: nothing to check")
            return
        from suite.site import build

        want = score_mod.inputs_digest(score_mod.entry_folders(list(roots)), tier, registry.all_tasks())
        path, out = Path(out) / score_mod.SCORES_FILE, Path(out)
        found = {score_mod.SCORES_FILE: score_mod.read_scores(path)[1] if path.is_file() else "",
                 **build.recorded_digests(out)}
        stale = sorted(name for name, digest in found.items() if digest != want)
        if stale:
            fail(f"{out}/: {', '.join(stale)} are stale or missing relative to the committed "
                 f"results (inputs {want[:12]}); run `{rebuild}` and commit {out}/")
        scores, inputs = score_mod.scored_inputs(list(roots), out, tier=tier)
        stale = rebuilt_differences(inputs, scores, out)
    if stale:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        fail(f"{out}/: {shown} differ from what this ldbench builds from the same results (its "
             f"code or wording changed since); run `{rebuild}` and commit {out}/")
    click.echo(f"ok: {out}/ is up to date with the results and this ldbench (inputs "
               f"{inputs.digest[:12]}; rebuilt and compared byte for byte)")


def rebuilt_differences(inputs: score_mod.Inputs, scores, out: Path) -> list[str]:
    """scores.parquet, if scoring the inputs now gives other scores, and the site's files that a
    rebuild would change."""
    from suite.site import build

    with tempfile.TemporaryDirectory(prefix="ldbench-check-") as tmp:
        path = Path(tmp) / score_mod.SCORES_FILE
        score_mod.write_scores(score_mod.score(inputs), path, inputs.digest)
        rescored = score_mod.read_scores(path)[0]
    stale = [] if score_mod.same_scores(rescored, scores) else [score_mod.SCORES_FILE]
    return stale + build.differences(inputs, scores, out)


def fail(message: str) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


# -- compare, tune and Dask execution (issue 12) --------------------------------------------------


@main.command("compare")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--tier", default=None, type=click.Choice(registry.TIERS),
              help="Tier to compare (default: the one tier the results have).")
@click.option("--profile", default="cpu-2core", show_default=True, help="Hardware profile.")
@click.option("--format", "fmt", default="simple", show_default=True,
              help="markdown (for a PR) or any tabulate format (simple, github, ...).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Also write an SVG of each task's target curve with seed bands.")
def compare_cmd(paths, tier, profile, fmt, plot_path) -> None:
    """Entries (or results folders) side by side: mean ± CI per task and ranked metric."""
    from suite import compare

    unique: dict[Path, str] = {}
    for path in paths:  # the first spelling of each folder
        unique.setdefault(Path(path).resolve(), path)
    if len(unique) < len(paths):
        click.echo(f"note: {len(paths) - len(unique)} of the paths name a folder given before; "
                   "each folder is compared once", err=True)
    cols = compare.columns(list(unique.values()), tier=tier, profile=profile)
    click.echo(compare.render(cols, fmt=fmt))
    if note := compare.tracks_note(cols):
        click.echo(note, err=True)
    if plot_path:
        click.echo(f"wrote {compare.plot(cols, plot_path)}")


def render_study(folder: Path, fmt: str) -> str:
    """A study's trials (best marked *), its tuned hyperparameters and evaluation summary."""
    from suite import tune

    table, tuned = tune.show(folder)
    table = table.assign(target_mean=[report.format_number(m) if done else "not run yet"  # interrupted
                                      for m, done in zip(table["target_mean"], table["done"], strict=True)])
    if "tie_break" in table:  # only tasks that declare one have it: blank for the others
        means = table["tie_break_mean"].map(lambda v: report.format_number(v) if v == v else "")
        table = table.assign(tie_break=table["tie_break"].fillna(""), tie_break_mean=means)
    text = tabulate(table.drop(columns=["target"]), headers="keys", tablefmt=fmt, showindex=False,
                    disable_numparse=True)
    text = f"study {folder} · target per task: {dict(zip(table.task, table.target, strict=True))}\n{text}"
    if tuned:
        text += "\n\ntuned: " + json.dumps(tuned, sort_keys=True)
    if (folder / tune.EVAL / results.RUNS_FILE).is_file():
        runs = results.read_results(folder / tune.EVAL)[0]
        chosen = tune.chosen_evaluations(runs, tuned)
        left = runs["run_id"].nunique() - chosen["run_id"].nunique()
        text += "\n\nevaluation seeds of the chosen points:\n" + report.render(chosen, fmt)
        if left:
            text += f"\n({left} evaluation runs of points chosen before are left out)"
    return text


@main.command("tune")
@click.argument("entry_dir", type=click.Path(file_okay=False))
@click.option("--budget", required=True, type=click.IntRange(1), help="Trials per task.")
@click.option("--tasks", "task_list", default="", help="Comma-separated task names (default: all).")
@click.option("--tier", default="smoke", show_default=True, type=click.Choice(registry.TIERS))
@click.option("--profile", default="cpu-2core", show_default=True, help="Hardware profile.")
@click.option("--design-seed", default=0, show_default=True, type=click.IntRange(0),
              help="Seed of the quasi-random design of trial points.")
@click.option("--tuning-seeds", default=1, show_default=True, type=click.IntRange(1),
              help="Tuning seeds per trial (numbered from 1000000: never an evaluation seed).")
@click.option("--seeds", default=2, show_default=True, type=click.IntRange(1),
              help="Evaluation seeds 0..N-1 of the best trial.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Study folder (default: studies/ENTRY/PROFILE/TIER/budget-N).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a tier config value (task.key=value for one task). Repeatable.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--trial-batch", default="auto", show_default=True, metavar="auto|1|N",
              help="Train the trial runs of a task (every trial on every tuning seed) as one "
                   "batched computation: auto = all of them (one by one for the tasks the profile "
                   "lists as unbatched), N = up to N at a time (one batch per Dask worker, say), "
                   "1 = one by one.")
@cluster_options
def tune_cmd(entry_dir, budget, task_list, tier, profile, design_seed, tuning_seeds, seeds, out,
             sets, quiet, trial_batch, workers, scheduler, time_limit) -> None:
    """Tune ENTRY_DIR at a fixed budget of trials per task, then run the best on the evaluation seeds."""
    from suite import tune

    names = [t.strip() for t in task_list.split(",") if t.strip()] or None
    folder = tune.tune(entry_dir, budget=budget, tasks=names, tier=tier, profile=profile,
                       design_seed=design_seed, tuning_seeds=tuning_seeds, eval_seeds=seeds, out=out,
                       workers=workers, scheduler=scheduler, time_limit=time_limit, sets=list(sets),
                       progress=not quiet, trial_batch=trial_batch)
    click.echo(render_study(folder, "simple"))
    click.echo(f"wrote {folder / tune.TUNED_FILE}")
