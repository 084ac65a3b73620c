"""Builds the static leaderboard: index.html, one page per entry, SVG plots and README.md."""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

import jinja2
import pandas as pd
from tabulate import tabulate

from suite import interval, profiles, registry, results
from suite.entry import NAME_PATTERN, Entry
from suite.report import ARROWS, format_number
from suite.score import TAU_MAX, Inputs
from suite.site.plots import task_plots
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
    env.globals["interval_method"] = interval.METHOD  # the same words as `ldbench show`
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
    """'mean [low, high]' of a metric row, noting seeds that did not reach a target (an infinite
    value) or have no result (NaN), in the words of `ldbench show`."""
    seeds, failed = int(row["seeds"]), int(row["failures"])
    unreached = int(row["unreached"])
    notes = [f"{word} {n}/{seeds}" for word, n in
             (("not reached", unreached), ("no result", failed - unreached)) if n]
    if failed == seeds:
        return ", ".join(notes)
    text = format_number(float(row["mean"]))
    if math.isfinite(row["ci_low"]):
        text += f" [{format_number(float(row['ci_low']))}, {format_number(float(row['ci_high']))}]"
    elif seeds - failed < interval.MIN_SEEDS:
        notes.append(interval.NO_INTERVAL)
    return text + (f" ({', '.join(notes)})" if notes else "")


def rank_of(row: dict | None) -> int | None:
    """The row's rank, None for a diagnostic metric (shown, never ranked)."""
    return None if row is None or row["rank"] is None else int(row["rank"])


def steps_text(value: float) -> str:
    return "not reached" if not math.isfinite(value) else f"{value:,.0f}"


def ratio_text(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.2f}×"


# -- page contexts -----------------------------------------------------------------------------
# The scores table becomes plain dicts once: per-entry pandas filtering is far too slow for
# a thousand entries.

def records(scores: pd.DataFrame) -> list[dict]:
    """The scores rows as dicts, with NA replaced by None/NaN and booleans made plain."""
    rows = scores.astype(object).where(scores.notna(), None).to_dict("records")
    for row in rows:
        row["target"] = bool(row["target"]) if row["target"] is not None else False
        for key in ("mean", "ci_low", "ci_high", "time_to_target", "ratio", "score"):
            row[key] = math.nan if row[key] is None else float(row[key])
    return rows


def group_by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def overall_rows(rows: list[dict], families: list[str]) -> list[dict]:
    fam = {(r["family"], r["entry"]): r["score"] for r in rows if r["level"] == "family"}
    overall = sorted((r for r in rows if r["level"] == "overall"), key=lambda r: (r["rank"], r["entry"]))
    return [{"rank": int(r["rank"]), "entry": r["entry"], "score": f"{r['score']:.3f}",
             "solved": f"{int(r['solved'])}/{int(r['tasks'])}",
             "families": [f"{fam[f, r['entry']]:.3f}" if (f, r["entry"]) in fam else "—"
                          for f in families]}
            for r in overall]


def task_section(name: str, cls: type[Task], rows: list[dict], tier: str) -> dict:
    """One task's table from its metric rows: entries by time to target, every metric's mean [CI]."""
    declared = cls(cls.tiers[tier]).metrics()
    present = {r["metric"] for r in rows}
    metrics = [m for m in declared if m in present]
    target = {r["entry"]: r for r in rows if r["metric"] == cls.target}
    by_key = {(r["entry"], r["metric"]): r for r in rows}

    def order(entry: str) -> tuple:
        t = target.get(entry)
        return (math.inf, math.inf, entry) if t is None else (t["ratio"], t["time_to_target"], entry)

    entries = sorted({r["entry"] for r in rows}, key=order)
    table = []
    for entry in entries:
        t = target.get(entry, {"ratio": math.inf, "time_to_target": math.inf})
        cells = []
        for metric in metrics:
            r = by_key.get((entry, metric))
            cells.append({"text": cell_text(r) if r else "—", "rank": rank_of(r),
                          "sort": sort_key(r)})
        table.append({"entry": entry, "time": steps_text(t["time_to_target"]),
                      "ratio": ratio_text(t["ratio"]), "ratio_sort": t["ratio"], "cells": cells})
    return {
        "name": name, "family": cls.family, "version": cls.version, "description": cls.description,
        "target": cls.target, "target_description": declared[cls.target].description,
        "metrics": [{"name": m, "arrow": ARROWS[declared[m].direction] if declared[m].role != "diagnostic"
                     else "(diagnostic)",
                     "description": declared[m].description, "unit": declared[m].unit}
                    for m in metrics],
        "rows": table, "entries": entries, "specs": cls(cls.tiers[tier]).plots(),
    }


def sort_key(row: dict | None) -> float:
    """A number the page's table sorter orders by: the mean, failures last."""
    if row is None or not math.isfinite(row["mean"]):
        return math.inf
    return row["mean"]


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
                cache[key] = results.read_capped(path) if path and path.is_file() else None
            except results.ResultsError:
                cache[key] = None
        if cache[key] is not None:
            frames.append(cache[key][cache[key]["task"] == task])
    if not frames:
        return pd.DataFrame(columns=results.CURVE_SCHEMA.names)
    return pd.concat(frames, ignore_index=True)


def plots_for(inputs: Inputs, rows: list[dict], section: dict, profile: str, tier: str,
              out: Path, cache: dict, written: set[Path]) -> list[dict]:
    top = section["entries"][:8]  # plots show the best entries; the table has them all
    curves = curves_for_task(inputs, profile, section["name"], top, cache)
    metrics = pd.DataFrame([r for r in rows if r["entry"] in set(top)],
                           columns=["entry", "metric", "mean", "ci_low", "ci_high"])
    shown = []
    for plot in task_plots(section["specs"], curves, metrics, top):
        rel = Path("plots") / f"{profile}-{tier}-{section['name']}-{plot.key}.svg"
        write_text(out / rel, plot.svg)
        written.add(out / rel)
        shown.append({"title": plot.title, "caption": plot.caption, "src": rel.as_posix()})
    return shown


def sections(inputs: Inputs, rows: list[dict], tasks: dict[str, type[Task]], out: Path,
             written: set[Path]) -> list[dict]:
    """One section per (profile, tier): overall ranking, family scores, task tables and plots."""
    found, cache = [], {}
    for (profile, tier), part in sorted(group_by(rows, "profile", "tier").items()):
        families = sorted({r["family"] for r in part if r["level"] == "family"})
        per_task = group_by([r for r in part if r["level"] == "metric"], "task")
        groups = []
        for family in families:
            secs = [task_section(t, cls, per_task[t,], tier) for t, cls in tasks.items()
                    if cls.family == family and (t,) in per_task]
            for sec in secs:
                sec["plots"] = plots_for(inputs, per_task[sec["name"],], sec, profile, tier, out,
                                         cache, written)
            groups.append({"name": family, "tasks": secs})
        try:
            description = profiles.load(profile).description
        except profiles.ProfileError:
            description = ""
        found.append({"id": f"{profile}-{tier}", "profile": profile, "tier": tier,
                      "description": description, "families": families,
                      "overall": overall_rows(part, families), "groups": groups,
                      "n_entries": len({r["entry"] for r in part})})
    return found


def provenance_rows(prov: list[dict], tasks: dict[str, type[Task]]) -> list[dict]:
    shown = []
    for p in prov:
        machine = p["fingerprint"] if isinstance(p["fingerprint"], dict) else {}
        shown.append({
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
    return shown


def entry_page(entry: Entry, rows: list[dict], prov: list[dict], tasks: dict[str, type[Task]]) -> dict:
    """The context of one entry's page: manifest, provenance per profile, and its scores."""
    shown = []
    for (profile, tier), part in sorted(group_by(rows, "profile", "tier").items()):
        metric_rows = group_by([r for r in part if r["level"] == "metric"], "task")
        task_rows = []
        for task, cls in tasks.items():
            if (task,) not in metric_rows:
                continue
            declared = cls(cls.tiers[tier]).metrics()
            task_rows.append({"task": task, "metrics": [
                {"name": r["metric"], "arrow": ARROWS.get(r["direction"], ""),
                 "description": declared[r["metric"]].description if r["metric"] in declared else "",
                 "text": cell_text(r), "rank": rank_of(r), "target": r["target"]}
                for r in metric_rows[task,]]})
        overall = [r for r in part if r["level"] == "overall"]
        shown.append({
            "profile": profile, "tier": tier, "tasks": task_rows,
            "overall": f"{overall[0]['score']:.3f} (rank {int(overall[0]['rank'])})" if overall else "—",
            "families": [(r["family"], f"{r['score']:.3f}", int(r["rank"]))
                         for r in part if r["level"] == "family"],
        })
    return {"entry": entry, "hparams": sorted(entry.hparams.items()),
            "runs": provenance_rows(prov, tasks), "results": shown}


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
           "every task); cells are the mean over seeds [{interval.METHOD}]; diagnostic metrics "
           "are shown, never ranked.", ""]
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
    rows = records(scores)
    site = sections(inputs, rows, tasks, out, written)
    env = environment()
    common = {"digest": inputs.digest, "tau_max": TAU_MAX}
    write_text(out / "index.html", env.get_template("index.html.j2").render(
        sections=site, entries=sorted(inputs.entries), root="", **common))
    written.add(out / "index.html")
    page = env.get_template("entry.html.j2")
    per_entry = group_by(rows, "entry")
    prov = group_by(inputs.provenance.to_dict("records") if len(inputs.provenance) else [], "entry")
    for (name,), mine in sorted(per_entry.items()):
        if name not in inputs.entries or not NAME_PATTERN.match(name):  # names safe as file names
            continue
        path = out / "entries" / f"{name}.html"
        context = entry_page(inputs.entries[name], mine, prov.get((name,), []), tasks)
        write_text(path, page.render(root="../", **context, **common))
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
