"""The `ldbench` command line: list tasks, run an entry, show results."""

from __future__ import annotations

import sys

import click
from tabulate import tabulate

from suite import registry, report, results, runner
from suite.entry import EntryError
from suite.profiles import ProfileError

USER_ERRORS = (EntryError, ProfileError, registry.RegistryError, results.ResultsError)


def user_errors(func):
    """Turn our own errors (bad entry, profile, task, results) into one line and exit 2."""
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(2)
    wrapper.__name__, wrapper.__doc__ = func.__name__, func.__doc__
    return wrapper


@click.group()
@click.version_option(package_name="ldbench")
def main() -> None:
    """ldbench: a benchmark suite for the learning dynamics of neural networks."""


@main.command()
@user_errors
def tasks() -> None:
    """List the tasks with their version, family, tiers and metrics."""
    rows = []
    for name, cls in registry.all_tasks().items():
        metrics = cls(cls.tiers["standard"]).metrics()
        listed = ", ".join(f"{m} {report.ARROWS[spec.direction]}" for m, spec in metrics.items())
        tiers = " / ".join(f"{t}: {cls.tiers[t]['steps']} steps" for t in registry.TIERS)
        rows.append([name, cls.version, cls.family, tiers, listed])
    click.echo(tabulate(rows, headers=["task", "version", "family", "tiers", "metrics"],
                        tablefmt="simple", maxcolwidths=[None, None, None, 22, 70]))


@main.command()
@click.argument("entry_dir", type=click.Path(file_okay=False))
@click.option("--tasks", "task_list", default="", help="Comma-separated task names (default: all).")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(1), help="Seeds 0..N-1.")
@click.option("--tier", default="smoke", show_default=True, type=click.Choice(registry.TIERS))
@click.option("--profile", default="cpu-2core", show_default=True, help="Hardware profile.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a tier config value (task.key=value for one task). Repeatable.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Results folder (default: ENTRY_DIR/results/PROFILE/TIER).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def run(entry_dir, task_list, seeds, tier, profile, sets, out, quiet) -> None:
    """Run ENTRY_DIR on the suite, write Parquet results and print a summary table."""
    names = [t.strip() for t in task_list.split(",") if t.strip()] or None
    runs = runner.run_suite(entry_dir, tasks=names, seeds=seeds, tier=tier, profile=profile,
                            sets=list(sets), out=out, progress=not quiet)
    click.echo(report.render(runs))
    errors = runs[runs["status"] == "error"].drop_duplicates("run_id")
    for _, row in errors.iterrows():
        click.secho(f"run {row['task']} seed {row['seed']} failed: {row['error']}", fg="red",
                    err=True)
    if len(errors):
        sys.exit(1)


@main.command()
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="simple", show_default=True,
              help="tabulate table format (simple, github, ...).")
@user_errors
def show(results_dir, fmt) -> None:
    """Print the summary table of the results under RESULTS_DIR."""
    runs, _ = results.read_results(results_dir)
    click.echo(report.render(runs, fmt=fmt))
