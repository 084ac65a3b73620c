"""Builds the static leaderboard: index.html, one page per entry, SVG plots and README.md."""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from tabulate import tabulate

from suite import profiles, registry, results
from suite.entry import NAME_PATTERN
from suite.report import ARROWS, format_number
from suite.score import TAU_MAX, Inputs
from suite.site.plots import Plot, task_plots
from suite.task import Task

TEMPLATES = Path(__file__).parent / "templates"
README_TOP = 25  # rows per table in README.md; index.html has them all
INPUTS_META = re.compile(r'<meta name="ldbench-inputs" content="([0-9a-f]*)">')
INPUTS_COMMENT = re.compile(r"<!-- ldbench-inputs: ([0-9a-f]*) -->")


def environment() -> jinja2.Environment:
    # Autoescaping everywhere: names, descriptions and authors of submissions are untrusted text.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = format_number
    env.filters["sortval"] = sort_value
    return env


def sort_value(value: float) -> str:
    """A number the page's table sorter can parse: failures (inf, NaN) sort last."""
    return repr(float(value)) if math.isfinite(value) else "1e308"


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the numbers, as text ----------------------------------------------------------------------

def cell_text(row) -> str:
    """'mean [low, high]' of a metric row, with the seeds that failed."""
    seeds, failed = int(row["seeds"]), int(row["failures"])
    word = "not reached" if truthy(row["target"]) else "failed"
    if failed == seeds:
        return f"{word} {failed}/{seeds}"
    text = format_number(float(row["mean"]))
    if np.isfinite(row["ci_low"]):
        text += f" [{format_number(float(row['ci_low']))}, {format_number(float(row['ci_high']))}]"
    return text + (f" ({word} {failed}/{seeds})" if failed else "")


def truthy(value) -> bool:
    """A boolean cell of the scores table, where family and overall rows hold NA."""
    return value is not None and not pd.isna(value) and bool(value)


def steps_text(value: float) -> str:
    return "not reached" if not math.isfinite(value) else f"{value:,.0f}"


def ratio_text(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.2f}×"


# -- page contexts -----------------------------------------------------------------------------

def overall_rows(scores: pd.DataFrame, families: list[str]) -> list[dict]:
    overall = scores[scores["level"] == "overall"].sort_values(["rank", "entry"])
    fam = scores[scores["level"] == "family"].set_index(["family", "entry"])["score"]
    return [{"rank": int(r["rank"]), "entry": r["entry"], "score": f"{r['score']:.3f}",
             "solved": f"{int(r['solved'])}/{int(r['tasks'])}",
             "families": [f"{fam[f, r['entry']]:.3f}" if (f, r["entry"]) in fam.index else "—"
                          for f in families]}
            for _, r in overall.iterrows()]


def task_section(name: str, cls: type[Task], scores: pd.DataFrame, tier: str) -> dict:
    """One task's table: entries by time to target, every metric's mean [CI] and rank."""
    declared = cls(cls.tiers[tier]).metrics()
    rows = scores[(scores["level"] == "metric") & (scores["task"] == name)]
    metrics = [m for m in declared if m in set(rows["metric"])]
    target = rows[rows["metric"] == cls.target].set_index("entry")
    entries = sorted(set(rows["entry"]), key=lambda e: (
        target["ratio"].get(e, math.inf), target["time_to_target"].get(e, math.inf), e))
    by_key = {(r.entry, r.metric): r for r in rows.itertuples(index=False)}
    table = []
    for entry in entries:
        cells = []
        for metric in metrics:
            r = by_key.get((entry, metric))
            cells.append({"text": cell_text(r._asdict()) if r else "—",
                          "rank": int(r.rank) if r else None, "sort": sort_key(r)})
        table.append({"entry": entry, "time": steps_text(target["time_to_target"].get(entry, math.inf)),
                      "ratio": ratio_text(target["ratio"].get(entry, math.inf)),
                      "ratio_sort": float(target["ratio"].get(entry, math.inf)), "cells": cells})
    return {
        "name": name, "family": cls.family, "version": cls.version, "description": cls.description,
        "target": cls.target, "target_description": declared[cls.target].description,
        "metrics": [{"name": m, "arrow": ARROWS[declared[m].direction],
                     "description": declared[m].description, "unit": declared[m].unit}
                    for m in metrics],
        "rows": table, "entries": entries,
    }


def sort_key(row) -> float:
    """A number the page's table sorter orders by: the mean, failures last."""
    if row is None or not np.isfinite(row.mean):
        return math.inf
    return float(row.mean)


def curves_for_task(inputs: Inputs, profile: str, task: str, entries: list[str],
                    cache: dict) -> pd.DataFrame:
    """The curves of `task` for `entries`, read from their results folders (only those)."""
    frames = []
    for entry in entries:
        key = (entry, profile)
        if key not in cache:
            folder = inputs.results_dirs.get(key)
            path = folder / results.CURVES_FILE if folder else None
            try:
                cache[key] = results.read_table(path) if path and path.is_file() else None
            except results.ResultsError:
                cache[key] = None
        if cache[key] is not None:
            frames.append(cache[key][cache[key]["task"] == task])
    if not frames:
        return pd.DataFrame(columns=results.CURVE_SCHEMA.names)
    return pd.concat(frames, ignore_index=True)


def plots_for(inputs: Inputs, scores: pd.DataFrame, section: dict, profile: str, tier: str,
              out: Path, cache: dict, written: set[Path]) -> list[dict]:
    top = section["entries"][:8]  # plots show the best entries; the table has them all
    curves = curves_for_task(inputs, profile, section["name"], top, cache)
    metrics = scores[(scores["level"] == "metric") & (scores["task"] == section["name"])]
    found: list[Plot] = task_plots(curves, metrics, top)
    shown = []
    for plot in found:
        rel = Path("plots") / f"{profile}-{tier}-{section['name']}-{plot.key}.svg"
        write_text(out / rel, plot.svg)
        written.add(out / rel)
        shown.append({"title": plot.title, "caption": plot.caption, "src": rel.as_posix()})
    return shown


def sections(inputs: Inputs, scores: pd.DataFrame, tasks: dict[str, type[Task]], out: Path,
             written: set[Path]) -> list[dict]:
    """One section per (profile, tier): overall ranking, family scores, task tables and plots."""
    found, cache = [], {}
    for (profile, tier), part in scores.groupby(["profile", "tier"], sort=True):
        families = sorted(set(part.loc[part["level"] == "family", "family"]))
        task_names = [t for t in tasks if t in set(part["task"].dropna())]
        groups = []
        for family in families:
            secs = [task_section(t, tasks[t], part, tier) for t in task_names if tasks[t].family == family]
            for sec in secs:
                sec["plots"] = plots_for(inputs, part, sec, profile, tier, out, cache, written)
            groups.append({"name": family, "tasks": secs})
        try:
            description = profiles.load(profile).description
        except profiles.ProfileError:
            description = ""
        found.append({"id": f"{profile}-{tier}", "profile": profile, "tier": tier,
                      "description": description, "families": families,
                      "overall": overall_rows(part, families), "groups": groups,
                      "n_entries": int(part["entry"].nunique())})
    return found


def entry_page(name: str, inputs: Inputs, scores: pd.DataFrame, tasks: dict[str, type[Task]]) -> dict:
    entry = inputs.entries[name]
    mine = scores[scores["entry"] == name]
    prov = inputs.provenance
    runs = []
    for _, p in (prov[prov["entry"] == name].iterrows() if len(prov) else []):
        machine = p["fingerprint"] if isinstance(p["fingerprint"], dict) else {}
        runs.append({
            "profile": p["profile"], "tier": p["tier"], "entry_hash": p["entry_hash"],
            "suite_versions": ", ".join(p["suite_versions"]), "git_commit": p["git_commit"] or "—",
            "task_versions": [{"task": t, "version": v, "current": t in tasks and tasks[t].version == v}
                              for t, v in sorted(p["task_versions"].items())],
            "machine": [(k, str(machine[k])) for k in ("cpu_model", "cpu_count", "device_name",
                                                        "torch_version", "python_version", "platform")
                        if k in machine],
            "dates": f"{date_text(p['first_run'])} – {date_text(p['last_run'])}",
            "runs": p["runs"], "seeds": p["seeds"],
        })
    results_ = []
    for (profile, tier), part in mine.groupby(["profile", "tier"], sort=True):
        overall = part[part["level"] == "overall"]
        task_rows = []
        for task in [t for t in tasks if t in set(part["task"].dropna())]:
            declared = tasks[task](tasks[task].tiers[tier]).metrics()
            rows = part[(part["level"] == "metric") & (part["task"] == task)]
            task_rows.append({"task": task, "metrics": [
                {"name": r["metric"], "arrow": ARROWS.get(r["direction"], ""),
                 "description": declared[r["metric"]].description if r["metric"] in declared else "",
                 "text": cell_text(r), "rank": int(r["rank"]), "target": truthy(r["target"])}
                for _, r in rows.iterrows()]})
        results_.append({
            "profile": profile, "tier": tier, "tasks": task_rows,
            "overall": (f"{overall['score'].iloc[0]:.3f} (rank {int(overall['rank'].iloc[0])})"
                        if len(overall) else "—"),
            "families": [(r["family"], f"{r['score']:.3f}", int(r["rank"]))
                         for _, r in part[part["level"] == "family"].iterrows()],
        })
    return {"entry": entry, "hparams": sorted(entry.hparams.items()), "runs": runs, "results": results_}


def date_text(value) -> str:
    return "?" if pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d")


# -- README.md ---------------------------------------------------------------------------------

def markdown(site: list[dict], digest: str) -> str:
    """The leaderboard as Markdown tables (tabulate), readable on a code host."""
    out = ["# ldbench leaderboard", "",
           f"<!-- ldbench-inputs: {digest} -->",
           "Generated by `ldbench score && ldbench leaderboard build`; open `index.html` for every "
           "entry, the plots and the entry pages. Scores are the normalised area under each "
           f"entry's time-to-target performance profile for τ ∈ [1, {TAU_MAX:g}] (1 = fastest on "
           "every task); cells are the mean over seeds [95% bootstrap CI].", ""]
    for sec in site:
        out += [f"## {sec['profile']} · {sec['tier']} tier", ""]
        head = ["rank", "entry", "score", "solved"] + sec["families"]
        rows = [[r["rank"], r["entry"], r["score"], r["solved"], *r["families"]]
                for r in sec["overall"][:README_TOP]]
        out += [tabulate(rows, headers=head, tablefmt="github", disable_numparse=True), ""]
        for group in sec["groups"]:
            for task in group["tasks"]:
                out += [f"### {task['name']} ({group['name']})", "",
                        f"Target: `{task['target']}`, {md(task['target_description'])}.", ""]
                head = ["entry", "steps to target", "ratio"] + [
                    f"{m['name']} {m['arrow']}" for m in task["metrics"]]
                rows = [[r["entry"], r["time"], r["ratio"], *[md(c["text"]) for c in r["cells"]]]
                        for r in task["rows"][:README_TOP]]
                out += [tabulate(rows, headers=head, tablefmt="github", disable_numparse=True), ""]
                out += [f"![{p['title']}]({p['src']})" for p in task["plots"]] + [""]
    return "\n".join(out)


def md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


# -- the build ---------------------------------------------------------------------------------

def build(inputs: Inputs, scores: pd.DataFrame, out: str | Path, *,
          tasks: dict[str, type[Task]] | None = None) -> list[Path]:
    """Write index.html, entries/*.html, plots/*.svg and README.md under `out`; return the files."""
    out = Path(out)
    tasks = tasks if tasks is not None else registry.all_tasks()
    written: set[Path] = set()
    site = sections(inputs, scores, tasks, out, written)
    env = environment()
    common = {"digest": inputs.digest, "tau_max": TAU_MAX}
    write_text(out / "index.html", env.get_template("index.html.j2").render(
        sections=site, entries=sorted(inputs.entries), root="", **common))
    written.add(out / "index.html")
    page = env.get_template("entry.html.j2")
    for name in sorted(set(scores["entry"]) & set(inputs.entries)):
        if not NAME_PATTERN.match(name):  # a page per entry only for names safe as file names
            continue
        path = out / "entries" / f"{name}.html"
        write_text(path, page.render(root="../", **entry_page(name, inputs, scores, tasks), **common))
        written.add(path)
    write_text(out / "README.md", markdown(site, inputs.digest))
    written.add(out / "README.md")
    for stale in [*out.glob("entries/*.html"), *out.glob("plots/*.svg")]:
        if stale not in written:  # an entry or plot that is gone since the last build
            stale.unlink()
    return sorted(written)


def recorded_digests(out: Path) -> dict[str, str]:
    """The input digests recorded in a built leaderboard's files ('' where missing)."""
    found = {}
    for name, pattern in (("index.html", INPUTS_META), ("README.md", INPUTS_COMMENT)):
        path = out / name
        match = pattern.search(path.read_text(encoding="utf-8")) if path.is_file() else None
        found[name] = match.group(1) if match else ""
    return found
