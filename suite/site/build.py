"""Builds the static leaderboard: index.html, one page per entry, SVG plots and README.md."""

from __future__ import annotations

import functools
import itertools
import json
import math
import multiprocessing
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markupsafe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tabulate import tabulate

from suite import interval, profiles, registry, results, tune
from suite.entry import NAME_PATTERN, Entry
from suite.report import ARROWS, format_number, na_reason
from suite.score import TAU_MAX, TRACKS, Inputs, seed_statistics
from suite.site import small
from suite.site.plots import LINES, task_plots
from suite.task import Plot as PlotSpec
from suite.task import Task

TEMPLATES = Path(__file__).parent / "templates"
TOP = 25  # rows per table on index.html and in README.md; longer tables get a page of their own
WORKERS = 4  # processes writing the entry pages (at most one per core)
PAGES_PER_JOB = 50  # entry pages a worker writes per job
LEFT_OUT_NAMES = 12  # entries a plot's caption names as left out; the rest are counted
TRACK_TEXT = {  # heading and what differs between the entries of a track
    "optimizer": ("Optimizer track", "Each task's reference model, trained by the entry's optimizer: "
                  "only the optimizer differs between entries."),
    "architecture": ("Architecture track", "The entry's model (make_model), trained by each task's "
                     "reference optimizer and hyperparameters: only the architecture differs. Entries "
                     "marked recipe bring their own optimizer as well (model and optimizer together)."),
}
BAND_NOTE = {  # how a plot kind shows the spread over seeds, in the words of the tables
    "panels": f"Lines: mean over seeds; shaded bands: the {interval.METHOD} of the mean at each "
              f"evaluation (clipped to the curve's range; none with fewer than {interval.MIN_SEEDS} seeds).",
    "lines": f"Lines: mean over seeds; shaded bands: the {interval.METHOD} of the mean at each "
             f"evaluation (clipped to the curve's range; none with fewer than {interval.MIN_SEEDS} seeds).",
    "path": f"Points: mean over seeds of the final values; shaded bands: the {interval.METHOD} "
            f"(none with fewer than {interval.MIN_SEEDS} seeds).",
    "dots": f"Dots: mean over seeds; bars: the {interval.METHOD} (none with fewer than "
            f"{interval.MIN_SEEDS} seeds).",
}
INPUTS_META = re.compile(r'<meta name="ldbench-inputs" content="([0-9a-f]*)">')
INPUTS_COMMENT = re.compile(r"<!-- ldbench-inputs: ([0-9a-f]*) -->")


class Environment(jinja2.Environment):
    """Looks `x.key` up as an item first when x is a plain dict (every page context here is):
    jinja's default tries the attribute first, and the AttributeError costs ten times the
    lookup, millions of times in a thousand-entry build. No context key shadows a dict method."""

    def getattr(self, obj, attribute):
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def environment() -> jinja2.Environment:
    # Autoescaping everywhere: names, descriptions and authors of submissions are untrusted text.
    env = Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = format_number
    env.filters["sortval"] = sort_value
    env.filters["worstlast"] = worst_last
    env.filters["wbr"] = break_slashes
    env.filters["code"] = code_spans
    env.filters["toml"] = toml_text
    env.filters["td"] = cell_td
    env.filters["entry_td"] = entry_td
    env.globals["tau_max"] = TAU_MAX
    env.globals["interval_method"] = interval.METHOD  # the same words as `ldbench show`
    return env


def toml_text(value) -> str:
    """A hyperparameter as entry.toml writes it (true, "text", [1, 2], { a = 1 }, exact numbers
    that can be copied into one), not Python's repr (True, {'a': 1})."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # exact (shortest round trip), and 1.0 stays a float
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_text(v)}" for k, v in value.items()) + " }"
    return str(value)


def code_spans(text: str) -> markupsafe.Markup:
    """`text` escaped, its `backquoted` spans (written for the Markdown README too) as <code>."""
    parts = str(markupsafe.escape(text)).split("`")
    return markupsafe.Markup("".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)))


def break_slashes(text: str) -> markupsafe.Markup:
    """`text` escaped, with a line-break opportunity after each '/' (long metric names in headers)."""
    return markupsafe.Markup("/<wbr>").join(markupsafe.escape(text).split("/"))


def cell_td(cell: dict) -> markupsafe.Markup:
    """A metric's table cell (`cell`'s dict) as HTML: rank, mean, interval, why it is n/a.

    Python rather than a template macro: a thousand-entry build writes ~90,000 of these, and
    a macro call costs ten times this."""
    esc = markupsafe.escape
    state = f" {cell['state']}" if cell["state"] else ""
    title = f' title="{esc(cell["title"])}"' if cell["title"] else ""
    rank = cell["rank"]
    rank = f'<span class="rank{" r1" if rank == 1 else ""}">{rank}</span> ' if rank else ""
    detail = f'<span class="ci">{esc(cell["detail"])}</span>' if cell["detail"] else ""
    return markupsafe.Markup(f'<td class="num{state}" data-sort="{sort_value(cell["sort"])}"{title}>'
                             f'{rank}{esc(cell["text"])}{detail}</td>')


RECIPE_BADGE = ' <span class="badge recipe" title="its own model and optimizer">recipe</span>'


def entry_td(row: dict, root: str) -> markupsafe.Markup:
    """A task table's entry cell: the name, linked to its page, and its badges."""
    esc, name = markupsafe.escape, markupsafe.escape(row["entry"])
    badges = RECIPE_BADGE if row["recipe"] else ""
    if row["failed"]:
        why, failed = esc(row["failed_why"]), esc(row["failed"])
        badges += f' <span class="badge failed" title="{why}">failed {failed}</span>'
    if row["na"]:
        badges += f' <span class="badge na" title="{esc(row["na"])}">n/a</span>'
    return markupsafe.Markup(f'<td data-sort="{name}"><a href="{esc(root)}entries/{name}.html">{name}</a>'
                             f'{badges}</td>')


def worst_last(value: float) -> str:
    """sort_value, but +inf (a target not reached) is the largest value, not a missing one: a
    descending sort of steps to target puts it first."""
    return "1e308" if value == math.inf else sort_value(value)


def sort_value(value: float) -> str:
    """A number the page's table sorter can parse; '' (no value: a failure, n/a, none) sorts
    last whichever way the column is sorted."""
    return repr(float(value)) if math.isfinite(value) else ""


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
    return " ".join(part for part in cell_parts(row) if part)


def cell_parts(row) -> tuple[str, str]:
    """cell_text in two parts: the mean (or, with no finite seed, the notes) and the rest."""
    seeds, failed = int(row["seeds"]), int(row["failures"])
    unreached = int(row["unreached"])
    notes = [f"{word} {n}/{seeds}" for word, n in
             (("not reached", unreached), ("no result", failed - unreached)) if n]
    if failed == seeds:
        return ", ".join(notes), ""
    detail = ""
    if math.isfinite(row["ci_low"]):
        detail = f"[{format_number(float(row['ci_low']))}, {format_number(float(row['ci_high']))}]"
    elif seeds - failed < interval.MIN_SEEDS:
        notes.append(interval.NO_INTERVAL)
    notes_text = f"({', '.join(notes)})" if notes else ""
    return format_number(float(row["mean"])), " ".join(p for p in (detail, notes_text) if p)


def rank_of(row: dict | None) -> int | None:
    """The row's rank, None for a diagnostic metric (shown, never ranked)."""
    return None if row is None or row["rank"] is None else int(row["rank"])


def steps_text(value: float, row: dict | None = None) -> str:
    """Median steps to the target; where it is infinite, why: "no result" where every seed
    failed (`row`'s counts, as the entry page's target line says), else "not reached"."""
    if math.isfinite(value):
        return f"{value:,.0f}"
    every_failed = row is not None and int(row["failures"]) == int(row["seeds"]) and not int(row["unreached"])
    return "no result" if every_failed else "not reached"


def ratio_text(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.2f}×"


# -- page contexts -----------------------------------------------------------------------------
# The scores table becomes plain dicts once: per-entry pandas filtering is far too slow for
# a thousand entries.

BOOLEANS = {"target": False, "recipe": False, "applicable": True, "complete": True}  # default if NA
FLOATS = ("mean", "ci_low", "ci_high", "time_to_target", "ratio", "score")  # NaN if NA


def records(scores: pd.DataFrame) -> list[dict]:
    """The scores rows as dicts, with NA replaced by None/NaN and booleans made plain.

    Built column by column, then zipped: pandas' row-wise to_dict boxes every cell on its own.
    """
    columns = {}
    for name in scores.columns:
        column = scores[name]
        if name in FLOATS:
            columns[name] = column.to_numpy(dtype=float, na_value=math.nan).tolist()
        elif name in BOOLEANS:
            columns[name] = [bool(v) if v is not None else BOOLEANS[name] for v in plain(column)]
        elif name == "track":
            columns[name] = [v or "optimizer" for v in plain(column)]
        else:
            columns[name] = plain(column)
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def plain(column: pd.Series) -> list:
    """The column's values as Python objects, None where missing."""
    return column.astype(object).where(column.notna(), None).tolist()


def group_by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


NO_NOTE = {"failed": 0, "why": "", "na": ""}  # every run of the task ended ok


def run_notes(runs: pd.DataFrame) -> dict[tuple, dict[str, dict]]:
    """Per (profile, tier, task), per entry with runs that did not end ok: how many seeds failed
    (error, timeout, diverged) and the first reason, and why a not-applicable run does not apply."""
    keys = ["profile", "tier", "task", "entry", "seed"]
    bad = runs.loc[runs["status"] != "ok", [*keys, "status", "error"]].drop_duplicates(keys)
    notes: dict[tuple, dict[str, dict]] = {}
    for profile, tier, task, entry, _, status, error in bad.itertuples(index=False):
        note = notes.setdefault((profile, tier, task), {}).setdefault(
            entry, {"failed": 0, "why": "", "na": ""})
        if status == "not-applicable":
            note["na"] = error or "the task cannot run this entry's model"
        else:
            note["failed"] += 1
            note["why"] = note["why"] or (status if status == "diverged" else error or status)
    return notes


def listing(names: list[str]) -> dict:
    """Up to LEFT_OUT_NAMES names, and how many more there are."""
    return {"names": names[:LEFT_OUT_NAMES], "more": max(0, len(names) - LEFT_OUT_NAMES)}


def suite_tasks(tasks: dict[str, type[Task]], tier: str) -> set[str]:
    """The tasks of the suite at `tier`: an entry without runs of one is incomplete (as in
    score.coverage), whatever the other entries ran."""
    return {name for name, cls in tasks.items() if tier in cls.tiers}


def overall_rows(rows: list[dict], families: list[str], expected: set[str]) -> list[dict]:
    """The track's overall table: ranked entries first, then incomplete ones (not ranked) and
    entries without an applicable target anywhere."""
    fam = {(r["family"], r["entry"]): r for r in rows if r["level"] == "family"}
    metric = [r for r in rows if r["level"] == "metric"]
    have = {e: {r["task"] for r in mine} for (e,), mine in group_by(metric, "entry").items()}
    na = {e: len({r["task"] for r in mine}) for (e,), mine in
          group_by([r for r in metric if r["target"] and not r["applicable"]], "entry").items()}
    overall = {r["entry"]: r for r in rows if r["level"] == "overall"}
    recipes = {r["entry"] for r in metric if r["recipe"]}
    shown = []
    for entry in sorted(have):
        r = overall.get(entry, {"rank": None, "score": math.nan, "solved": 0, "tasks": 0})
        missing = sorted(expected - have[entry])
        shown.append({
            "rank": None if r["rank"] is None else int(r["rank"]), "entry": entry, "recipe": entry in recipes,
            "score": "—" if not math.isfinite(r["score"]) else f"{r['score']:.3f}",
            "score_sort": r["score"],
            "solved": f"{int(r['solved'])}/{int(r['tasks'])}", "na": na.get(entry, 0),
            "solved_sort": r["solved"] / r["tasks"] if r["tasks"] else math.nan,
            "incomplete": ", ".join(missing) if missing else "",
            "families": [family_cell(fam.get((f, entry))) for f in families]})
    return sorted(shown, key=lambda r: (r["rank"] is None, r["rank"] or 0,
                                        -r["score_sort"] if math.isfinite(r["score_sort"]) else 1.0,
                                        r["entry"]))


def family_cell(row: dict | None) -> dict:
    if row is None:
        return {"text": "—", "sort": math.nan, "incomplete": False}
    return {"text": f"{row['score']:.3f}", "sort": row["score"], "incomplete": not row["complete"]}


def declarations(tasks: dict[str, type[Task]], tier: str) -> dict[str, dict]:
    """What each task declares on `tier` (metrics, plots, curve bounds), built once per build:
    constructing some tasks is not free."""
    out = {}
    for name, cls in tasks.items():
        if tier in cls.tiers:
            task = cls(cls.tiers[tier])
            out[name] = {"metrics": task.metrics(), "plots": task.plots(),
                         "bounds": {n: c.bounds for n, c in task.curves().items()}}
    return out


def task_section(name: str, cls: type[Task], rows: list[dict], declared: dict, *,
                 notes: dict[str, dict], members: set[str]) -> dict:
    """One task's table from its metric rows on one track: entries by time to target, ranked
    metrics' mean [CI], then the diagnostics (folded away on the page); n/a and failed runs
    marked; `members`: the track's entries, those without runs of the task listed as incomplete."""
    metrics_ = declared["metrics"]
    present = {r["metric"] for r in rows}
    ranked = [m for m in metrics_ if m in present and metrics_[m].role != "diagnostic"]
    diagnostics = [m for m in metrics_ if m in present and metrics_[m].role == "diagnostic"]
    target = {r["entry"]: r for r in rows if r["metric"] == cls.target and r["applicable"]}
    by_key = {(r["entry"], r["metric"]): r for r in rows}
    per_entry = group_by(rows, "entry")
    whole_na = {e for (e,), mine in per_entry.items() if not any(r["applicable"] for r in mine)}

    def order(entry: str) -> tuple:
        t = target.get(entry)
        late = (entry in whole_na, math.inf, math.inf)
        return (*late, entry) if t is None else (False, t["ratio"], t["time_to_target"], entry)

    entries = sorted((e for (e,) in per_entry), key=order)
    without = sorted(members - set(entries))  # the track's entries with no runs of the task
    table = []
    for entry in entries:
        note = notes.get(entry, NO_NOTE)
        na = (note["na"] or "not applicable to this entry's model") if entry in whole_na else ""

        def why(metric: str, na=na, note=note) -> str:
            return na or (f"not applicable: {note['na']}" if note["na"] else na_reason(cls, metric))

        t = target.get(entry, {"ratio": math.inf, "time_to_target": math.inf})
        seeds = int(per_entry[entry,][0]["seeds"] or 0)
        table.append({
            "entry": entry, "recipe": per_entry[entry,][0]["recipe"], "na": na,
            "failed": f"{note['failed']}/{seeds}" if note["failed"] else "", "failed_why": note["why"],
            "time": "n/a" if na else steps_text(t["time_to_target"], target.get(entry)),
            "ratio": "n/a" if na else ratio_text(t["ratio"]), "ratio_sort": t["ratio"],
            "cells": [cell(by_key.get((entry, m)), why) for m in ranked],
            "diagnostics": [cell(by_key.get((entry, m)), why) for m in diagnostics]})
    return {
        "name": name, "family": cls.family, "version": cls.version, "description": cls.description,
        "target": cls.target, "target_description": metrics_[cls.target].description,
        "metrics": [header(m, metrics_[m]) for m in ranked],
        "diagnostics": [header(m, metrics_[m]) for m in diagnostics],
        "rows": table, "entries": entries, "specs": declared["plots"], "bounds": declared["bounds"],
        "not_applicable": sorted(whole_na), "incomplete": listing(without),
        "without": without,  # every incomplete entry, for the full table page
    }


def header(name: str, metric) -> dict:
    arrow = ARROWS[metric.direction] if metric.role != "diagnostic" else "(diagnostic)"
    return {"name": name, "arrow": arrow, "description": metric.description, "unit": metric.unit}


def cell(row: dict | None, why) -> dict:
    """One table cell: the mean and interval, 'n/a' with the reason as its title, or '—'."""
    if row is None:
        return {"text": "—", "detail": "", "rank": None, "sort": math.inf, "state": "", "title": "no rows"}
    if not row["applicable"]:
        return {"text": "n/a", "detail": "", "rank": None, "sort": math.inf, "state": "na",
                "title": why(row["metric"])}
    main, detail = cell_parts(row)
    failed = int(row["failures"]) > int(row["unreached"])  # seeds without a result
    return {"text": main, "detail": detail, "rank": rank_of(row), "sort": sort_key(row),
            "state": "failed" if failed else "", "title": ""}


def sort_key(row: dict | None) -> float:
    """What the page's table sorter orders a metric column by: a ranked metric's rank (so that
    sorting agrees with the ranks, failed seeds and resolution included; equal ranks keep the
    table's order), a diagnostic's mean; no value (failures, n/a) last."""
    if row is None:
        return math.inf
    if rank_of(row) is not None:
        return float(rank_of(row))
    return row["mean"] if math.isfinite(row["mean"]) else math.inf


def read_curves(inputs: Inputs, entry: str, profile: str, cache: dict | None) -> pd.DataFrame | None:
    """An entry's curves on `profile`, the scored runs' rows (None if it has none or they cannot
    be drawn), cached."""
    key = (entry, profile)
    if cache is not None and key in cache:
        return cache[key]
    table, _ = scored_curves(inputs, entry, profile)
    found = table.to_pandas() if table is not None else None
    if cache is not None:
        cache[key] = found
    return found


def curves_for_task(inputs: Inputs, profile: str, task: str, entries: list[str],
                    cache: dict) -> pd.DataFrame:
    """The curves of `task` for `entries`, read from their results folders (only those)."""
    frames = []
    for entry in entries:
        found = read_curves(inputs, entry, profile, cache)
        if found is not None:
            frames.append(found[found["task"] == task])
    if not frames:
        return pd.DataFrame(columns=results.CURVE_SCHEMA.names)
    return pd.concat(frames, ignore_index=True)


def plot_job(inputs: Inputs, rows: list[dict], section: dict, profile: str, cache: dict) -> tuple:
    """`task_plots`' arguments for a task's declared plots over the entries of one track, best
    first (the most any plot kind shows; the table has them all)."""
    drawable = [e for e in section["entries"] if e not in set(section["not_applicable"])]
    top = drawable[:2 * LINES]
    curves = curves_for_task(inputs, profile, section["name"], top, cache)
    metrics = pd.DataFrame([r for r in rows if r["entry"] in set(top) and r["applicable"]],
                           columns=["entry", "metric", "mean", "ci_low", "ci_high"])
    return section["specs"], curves, metrics, top, section["bounds"]


def shown_plots(plots: list, section: dict, key: str, out: Path, written: set[Path]) -> list[dict]:
    """Write a task's drawn plots (`key`: profile-tier-track); what its section shows of them,
    each saying which of the table's entries it left out (their own pages have their curves)."""
    kinds = {spec.key: spec.kind for spec in section["specs"]}
    shown = []
    for plot in plots:
        rel = Path("plots") / f"{key}-{section['name']}-{plot.key}.svg"
        write_text(out / rel, plot.svg)
        written.add(out / rel)
        na = set(section["not_applicable"])
        left = [{"name": e, "na": e in na} for e in section["entries"] if e not in set(plot.shown)]
        shown.append({"title": plot.title, "caption": plot.caption, "note": BAND_NOTE[kinds[plot.key]],
                      "src": rel.as_posix(), "shown": len(plot.shown), "total": len(section["entries"]),
                      "left": listing(left)})
    return shown


def sections(inputs: Inputs, rows: list[dict], tasks: dict[str, type[Task]],
             notes: dict[tuple, dict[str, dict]],
             declared: dict[str, dict[str, dict]]) -> tuple[list[dict], list[tuple]]:
    """One section per (profile, tier, track): overall ranking, family scores and task tables of
    the track's entries (the optimizer track first); and per task table, (its section, its
    plots' file prefix, `plot_job`): the plots are drawn later."""
    found, jobs, cache = [], [], {}
    for (profile, tier), whole in sorted(group_by(rows, "profile", "tier").items()):
        expected = suite_tasks(tasks, tier)  # as score's `complete`
        try:
            description = profiles.load(profile).description
        except profiles.ProfileError:
            description = ""
        by_track = group_by(whole, "track")
        for track in [t for t in TRACKS if (t,) in by_track]:
            part, key = by_track[track,], f"{profile}-{tier}-{track}"
            members = {r["entry"] for r in part}
            per_task = group_by([r for r in part if r["level"] == "metric"], "task")
            families = sorted({r["family"] for r in part if r["level"] == "family"}
                              | {tasks[t].family for (t,) in per_task if t in tasks})
            groups = []
            for family in families:
                secs = [task_section(t, cls, per_task[t,], declared[tier][t], members=members,
                                     notes=notes.get((profile, tier, t), {}))
                        for t, cls in tasks.items() if cls.family == family and (t,) in per_task]
                jobs += [(sec, key, plot_job(inputs, per_task[sec["name"],], sec, profile, cache))
                         for sec in secs]
                groups.append({"name": family, "tasks": secs})
            title, text = TRACK_TEXT[track]
            found.append({"id": key, "profile": profile, "tier": tier, "track": track, "title": title,
                          "track_text": text, "description": description, "families": families,
                          "overall": overall_rows(part, families, expected), "groups": groups,
                          "n_entries": len(members)})
    return found, jobs


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


def track_label(track: str, recipe: bool) -> str:
    return "architecture track, as a recipe (its own model and optimizer)" if recipe else f"{track} track"


def entry_page(entry: Entry, rows: list[dict], prov: list[dict], tasks: dict[str, type[Task]], *,
               notes: dict[tuple, dict[str, dict]], declared: dict[str, dict[str, dict]],
               expected: dict[tuple, set[str]], means_of, problem_of=lambda profile: "") -> dict:
    """The context of one entry's page: manifest, track, provenance per profile, its scores and
    its own curves (`means_of(profile)`: per task, its plotted curves' seed means there;
    `problem_of(profile)`: why there are none, or '')."""
    shown = []
    for (profile, tier), part in sorted(group_by(rows, "profile", "tier").items()):
        metric_rows = group_by([r for r in part if r["level"] == "metric"], "task")
        means = means_of(profile)
        task_rows = []
        for task, cls in tasks.items():
            if (task,) in metric_rows:
                note = notes.get((profile, tier, task), {}).get(entry.name, NO_NOTE)
                task_rows.append(entry_task(task, cls, metric_rows[task,], declared[tier][task], note,
                                            means.get(task)))
        overall = [r for r in part if r["level"] == "overall"]
        missing = sorted(expected[profile, tier] - {t for (t,) in metric_rows})
        shown.append({
            "profile": profile, "tier": tier, "tasks": task_rows,
            "anchor": f"{profile}-{tier}-{part[0]['track']}",
            "track": f"{part[0]['track']} track",
            "label": track_label(part[0]["track"], any(r["recipe"] for r in part)),
            "overall": score_text(overall[0]) if overall else "—",
            "incomplete": ", ".join(missing), "curves_problem": problem_of(profile),
            "families": [(r["family"], score_text(r)) for r in part if r["level"] == "family"],
        })
    hparams = sorted(entry.hparams.items(), key=lambda kv: (kv[0] != "default", kv[0]))  # default first
    return {"entry": entry, "hparams": hparams, "runs": provenance_rows(prov, tasks), "results": shown}


def study_section(tuned_file: Path | None) -> list[dict]:
    """The tuned view's entry page: per task of its `ldbench tune` study, the trials (the chosen
    one marked) and a chart of the target against each searched hyperparameter. Empty when the
    page is not in a tuned view, or when tuned.json lacks the trials (shown as absent, never
    guessed: `score` already read the chosen point from it)."""
    if tuned_file is None:
        return []
    try:
        provenance = json.loads(tuned_file.read_text(encoding="utf-8"))["provenance"]
        studied = provenance["tasks"]
        return [study_task(task, info) for task, info in studied.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
        return []


def study_task(task: str, info: dict) -> dict:
    trials, space = info["trials"], info["space"]
    # null: no trial reached the target, and the study kept the entry's own hyperparameters
    best = None if info["best_trial"] is None else int(info["best_trial"])
    trials = [tune.trial_record(t) for t in trials]  # a tuned.json written before it was strict JSON too
    points = [t["hparams"] for t in trials]
    # null: no tuning seed reached the target
    targets = np.array([math.inf if t["target_mean"] is None else float(t["target_mean"]) for t in trials])
    target = trials[0]["target"] if trials else ""
    charts = [{"name": name, "svg": markupsafe.Markup(small.study_chart(
        [p.get(name) for p in points], targets, space=space[name], best=best, xlabel=name,
        ylabel=target))} for name in sorted(space)]
    rows = [{"trial": t["trial"], "best": t["trial"] == best,
             "hparams": ", ".join(f"{k} = {format_number(v) if isinstance(v, float) else v}"
                                  for k, v in sorted(p.items())),
             "target": format_number(target_mean) if math.isfinite(target_mean) else "not reached",
             "reached": f"{t['reached']}/{t['seeds']}", "statuses": t["statuses"],
             "tie": tie_text(t.get("tie_break_mean"))}
            for t, p, target_mean in zip(trials, points, targets.tolist(), strict=True)]
    kept = info.get("chosen", "") if best is None else ""
    tie_break = trials[0].get("tie_break", "") if trials else ""  # the task's declared second criterion
    return {"task": task, "target": target, "charts": charts, "rows": rows, "kept": kept,
            "tie_break": tie_break}


def tie_text(value) -> str:
    return "—" if value is None or not math.isfinite(float(value)) else format_number(float(value))


def score_text(row: dict) -> str:
    """A family or overall score with its rank, or why it has none."""
    if row["rank"] is None:
        return f"{row['score']:.3f} (incomplete: not ranked)"
    return f"{row['score']:.3f} (rank {int(row['rank'])})"


def entry_task(task: str, cls: type[Task], rows: list[dict], declared: dict, note: dict,
               means: pd.DataFrame | None) -> dict:
    """One task on an entry's page: its metrics (ranked first), n/a and failures, its own plots."""
    whole_na = not any(r["applicable"] for r in rows)
    na = (note["na"] or "not applicable to this entry's model") if whole_na else ""
    metrics_ = declared["metrics"]
    place = {name: i for i, name in enumerate(metrics_)}  # ranked first, each in declared order
    ordered = sorted(rows, key=lambda r: (r["role"] == "diagnostic", place.get(r["metric"], len(place))))
    shown = []
    for r in ordered:
        spec = metrics_.get(r["metric"])
        arrow = "(diagnostic)" if r["role"] == "diagnostic" else ARROWS.get(r["direction"], "")
        shown.append({"name": r["metric"], "arrow": arrow,
                      "description": spec.description if spec else "", "target": r["target"],
                      "text": cell_text(r) if r["applicable"] else "n/a", "rank": rank_of(r),
                      "na": "" if r["applicable"] else na or (f"not applicable: {note['na']}" if note["na"]
                                                              else na_reason(cls, r["metric"]))})
    values = {r["metric"]: (r["mean"], r["ci_low"], r["ci_high"]) for r in rows if r["applicable"]}
    return {"task": task, "metrics": shown, "na": na, "target": target_text(rows),
            "failed": f"{note['failed']}/{int(rows[0]['seeds'])}"
            if note["failed"] else "", "failed_why": note["why"],
            "plots": [] if na else entry_plots(declared["plots"], means, values)}


def target_text(rows: list[dict]) -> str:
    """What the family score takes from this task: the target's median steps over seeds and its
    ratio to the best entry's ('' if the target does not apply)."""
    row = next((r for r in rows if r["target"] and r["applicable"]), None)
    if row is None:
        return ""
    time = row["time_to_target"]
    if not math.isfinite(time) and int(row["failures"]) == int(row["seeds"]) and not int(row["unreached"]):
        return (f"Target {row['metric']}: no seed has a result (every run failed), so this task "
                "counts as unsolved in the family score.")
    if not math.isfinite(time):
        return (f"Target {row['metric']}: reached by half the seeds or fewer (the median over seeds "
                "is not reached), so this task counts as unsolved in the family score.")
    return (f"Target {row['metric']}: median over seeds {steps_text(time)} steps, "
            f"{ratio_text(row['ratio'])} the steps of the best entry (the ratio the family score uses).")


def scored_curves(inputs: Inputs, entry: str, profile: str, *, columns: list[str] | None = None,
                  dictionary: tuple[str, ...] = ()) -> tuple[pa.Table | None, str]:
    """An entry's curves on `profile` as Arrow: the rows of its scored runs (`Inputs.run_ids`),
    `columns` of them (read_arrow's checks); or None and why (one line, without the file's path).

    A curves file that gives a (run, step, curve) twice is not drawn: which value is the
    run's? (validate refuses such files; score leaves out runs files that contradict themselves.)
    """
    folder = inputs.results_dirs.get((entry, profile))
    path = folder / results.CURVES_FILE if folder else None
    if path is None or not (path.exists() or path.is_symlink()):
        return None, f"its results hold no {results.CURVES_FILE}"
    if not results.plain_file(path):
        return None, f"its {results.CURVES_FILE} is not a plain file (a symlink, folder or special file)"
    read = None if columns is None else sorted({*columns, *CURVE_KEY}, key=results.CURVE_SCHEMA.names.index)
    try:
        table = results.read_arrow(path, max_rows=results.MAX_ROWS[results.CURVES_FILE],
                                   max_bytes=results.MAX_DECODED_BYTES, columns=read, dictionary=dictionary)
    except results.ResultsError as err:
        return None, f"its {results.CURVES_FILE} is unreadable: {str(err).removeprefix(f'{path}: ')}"
    ids = pa.array(sorted(inputs.run_ids(entry, profile)), pa.string())
    table = table.filter(pc.is_in(table["run_id"], value_set=ids))
    if not table.num_rows:  # an emptied file drew empty axes without a word
        return None, f"its {results.CURVES_FILE} holds no rows of its scored runs"
    if repeats_a_row(table):
        return None, (f"its {results.CURVES_FILE} gives a (run, step, curve) more than once; "
                      "`ldbench validate` names the rows")
    if outside := steps_outside(table, inputs.tier):
        return None, f"its {results.CURVES_FILE} has {outside}; `ldbench validate` names the rows"
    return (table if columns is None else table.select(columns)), ""


def steps_outside(table: pa.Table, tier: str) -> str:
    """'TASK's steps outside [0, N] (the tier's steps)' for the first task whose curves leave
    the range its runs train over (a step of -50 drew a spike at the axis, one of 1e15 squeezed
    the real curve into a corner), else ''."""
    task = pc.dictionary_encode(table["task"]).combine_chunks()
    at = np.asarray(task.indices.fill_null(-1))
    step = np.asarray(table["step"].fill_null(0), np.int64)
    for i, name in enumerate(task.dictionary.to_pylist()):
        last = registry.tier_steps(name, tier)
        mine = step[at == i]
        if last is not None and len(mine) and (mine.min() < 0 or mine.max() > last):
            return f"{name}'s steps outside [0, {last}] (the tier's steps)"
    return ""


def repeats_a_row(table: pa.Table) -> bool:
    """Whether two rows with a step and a curve name share (run, step, curve): one sort of
    integer keys (run and curve by dictionary position), a quarter of an Arrow group-by's time
    per page. Rows without a step or curve name are no point of any curve (never drawn)."""
    run, metric = (pc.dictionary_encode(table[c]).combine_chunks() for c in ("run_id", "metric"))
    valid = np.asarray(table["step"].is_valid()) & np.asarray(metric.is_valid())
    pair = (np.asarray(run.indices.fill_null(-1), np.int64) * (len(metric.dictionary) + 1)
            + np.asarray(metric.indices.fill_null(-1), np.int64))[valid]
    step = np.asarray(table["step"].fill_null(0), np.int64)[valid]
    order = np.lexsort((step, pair))
    pair, step = pair[order], step[order]
    return bool(np.any((pair[1:] == pair[:-1]) & (step[1:] == step[:-1])))


CURVE_KEY = ["run_id", "step", "metric"]  # one value each in a curves file
PAGE_COLUMNS = ("task", "step", "metric", "value")  # what an entry page's plots read of its curves


def page_means(tables: list[pa.Table | None], declared: dict[str, dict]) -> list[dict[str, small.Curves]]:
    """Per curves table (an entry's, on one profile; None: none or unreadable), per task and plotted curve:
    the seed means and bands (plots.seed_means' statistics, clipped to the task's own curve
    bounds) as a (4, evaluations) array of step, mean, low, high. Many entries at once, on
    integer keys from the tables' dictionaries: per-entry pandas calls cost more than the arithmetic."""
    out: list[dict[str, small.Curves]] = [{} for _ in tables]
    # One integer per declared (task, curve): a curve name may have other bounds in another task.
    pairs = sorted({(t, n): d["bounds"].get(n, (-math.inf, math.inf))
                    for t, d in declared.items() for spec in d["plots"] for n in spec.names()}.items())
    # (task, curve) -> pair index as a grid over positions; position -1 (not declared) -> -1
    tasks, names = ({name: i for i, name in enumerate(sorted({k[j] for k, _ in pairs}))} for j in (0, 1))
    grid = np.full((len(tasks) + 1, len(names) + 1), -1, np.int64)
    for i, ((task, name), _) in enumerate(pairs):
        grid[tasks[task], names[name]] = i
    parts = [page_rows(i, batch, tasks, names, grid) for i, table in enumerate(tables) if table is not None
             for batch in table.to_batches()]
    if not parts:
        return out
    page, pair, step, value = (np.concatenate(column) for column in zip(*parts, strict=True))
    if not len(page):
        return out
    # Steps by rank, not value: keys cannot overflow, whatever int64 steps a file holds.
    at_step, steps = pd.factorize(step, sort=True)
    keys, group = np.unique((page * len(pairs) + pair) * len(steps) + at_step, return_inverse=True)
    stats = seed_statistics(group=group, values=value, n_groups=len(keys))
    which, at = np.divmod(keys, len(steps))
    bounds = np.array([b for _, b in pairs], dtype=float).reshape(-1, 2)[which % len(pairs)]
    low, high = interval.t_intervals(mean=stats["mean"], sd=stats["sd"], n=stats["n"],
                                     bounds=(bounds[:, 0], bounds[:, 1]))
    arrays = np.stack([np.asarray(steps)[at], stats["mean"].to_numpy(), low, high]).astype(float)
    cuts = np.flatnonzero(which[1:] != which[:-1]) + 1
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(keys)], strict=True):
        (task, name), _ = pairs[which[a] % len(pairs)]
        out[which[a] // len(pairs)].setdefault(task, {})[name] = arrays[:, a:b]
    return out


def page_rows(page: int, batch: pa.RecordBatch, tasks: dict[str, int], names: dict[str, int],
              grid: np.ndarray) -> tuple[np.ndarray, ...]:
    """One batch of a curves table: its rows of declared curves with a step, as (page, pair
    index, step, value) arrays. `grid[tasks[task], names[curve]]`: a declared pair's index."""
    task, metric = (column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
                    for column in (batch.column("task"), batch.column("metric")))
    # each dictionary word's position (-1: undeclared), then each row's
    at_task = np.array([tasks.get(t, -1) for t in task.dictionary.to_pylist()] + [-1], np.int64)
    at_name = np.array([names.get(n, -1) for n in metric.dictionary.to_pylist()] + [-1], np.int64)
    known = (np.asarray(task.is_valid()) & np.asarray(metric.is_valid())
             & np.asarray(batch.column("step").is_valid()))
    pair = np.full(len(batch), -1, np.int64)
    pair[known] = grid[at_task[np.asarray(task.indices.fill_null(0))[known]],
                       at_name[np.asarray(metric.indices.fill_null(0))[known]]]
    keep = pair >= 0
    step = np.asarray(batch.column("step").fill_null(0), dtype=np.int64)
    value = np.asarray(batch.column("value").to_numpy(zero_copy_only=False), dtype=float)
    return np.full(int(keep.sum()), page, np.int64), pair[keep], step[keep], value[keep]


def entry_plots(specs: list[PlotSpec], curves: small.Curves | None, metrics: small.Values) -> list[dict]:
    """The task's declared plots for this entry alone, as small inline SVG."""
    out = []
    for spec in specs:
        if spec.kind == "dots":
            svg = small.dots(spec, metrics)
        elif curves is None:
            svg = None
        elif spec.kind == "path":
            svg = small.along_path(spec, {n: tuple(curves[n][1:, -1].tolist()) for n in spec.names()
                                          if n in curves})
        else:
            svg = small.over_steps(spec, curves, metrics)
        if svg is not None:
            out.append({"title": spec.title, "note": BAND_NOTE[spec.kind], "svg": markupsafe.Markup(svg)})
    return out


def date_text(value) -> str:
    return "?" if pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d")


# -- README.md ---------------------------------------------------------------------------------

def markdown(site: list[dict], digest: str, view: str = "") -> str:
    """The leaderboard as Markdown tables (tabulate), readable on a code host; `view`: what a
    tuned view shows (Inputs.view), '' for the main one."""
    out = ["# ldbench leaderboard" + (" · tuned view" if view else ""), "",
           *([f"**Tuned view.** {view} The main leaderboard ranks entries at the hyperparameters "
              "their authors chose.", ""] if view else []),
           f"<!-- ldbench-inputs: {digest} -->",
           f"Generated by `ldbench score && ldbench leaderboard build`: the first {TOP} entries of "
           "each table; open `index.html` for the plots, the entry pages and tables with every "
           "entry. Scores are the normalised area under each "
           f"entry's time-to-target performance profile for τ ∈ [1, {TAU_MAX:g}] (1 = fastest on "
           f"every task); cells are the mean over seeds [{interval.METHOD}]; diagnostic metrics "
           "are shown on index.html, never ranked. The optimizer and architecture tracks are "
           "ranked separately; n/a: the metric or task does not apply to the entry's model; "
           "incomplete entries (a task without runs) are shown, not ranked.", ""]
    for sec in site:
        out += [f"## {sec['title']} · {sec['profile']} · {sec['tier']} tier", "", sec["track_text"], ""]
        head = ["rank", "entry", "score", "targets reached"] + sec["families"]
        rows = [[r["rank"] or "incomplete", md_entry(r), r["score"],
                 r["solved"] + (f" ({r['na']} n/a)" if r["na"] else ""),
                 *[f["text"] + (" (incomplete)" if f["incomplete"] else "") for f in r["families"]]]
                for r in sec["overall"][:TOP]]
        out += [tabulate(rows, headers=head, tablefmt="github", disable_numparse=True), ""]
        for group in sec["groups"]:
            for task in group["tasks"]:
                out += [f"### {task['name']} ({group['name']}, {sec['track']} track)", "",
                        f"Target: `{task['target']}`, {md(task['target_description'])}.", ""]
                head = ["entry", "steps to target", "ratio"] + [
                    f"{m['name']} {m['arrow']}" for m in task["metrics"]]
                rows = [[md_entry(r), r["time"], r["ratio"],
                         *[md(" ".join(p for p in (c["text"], c["detail"]) if p)) for c in r["cells"]]]
                        for r in task["rows"][:TOP]]
                out += [tabulate(rows, headers=head, tablefmt="github", disable_numparse=True), ""]
                out += [f"![{p['title']}]({p['src']})" for p in task["plots"]] + [""]
    return "\n".join(out)


def md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def md_entry(row: dict) -> str:
    """An entry's name with its labels: recipe, failed runs."""
    labels = ["recipe"] * bool(row["recipe"]) + [f"failed {row.get('failed')}"] * bool(row.get("failed"))
    return md(row["entry"] + (f" ({', '.join(labels)})" if labels else ""))


# -- the build ---------------------------------------------------------------------------------

def build(inputs: Inputs, scores: pd.DataFrame, out: str | Path, *,
          tasks: dict[str, type[Task]] | None = None, tuned_views: list[str] | None = None,
          warn: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Write index.html, tables/*.html, entries/*.html, plots/*.svg and README.md under `out`;
    return the files. index.html links the tuned views built under `out` (or `tuned_views`).
    `warn`: told, in one line each, what the site shows less of than it could and why (an
    entry's curves file unreadable: its page says so too)."""
    out = Path(out)
    tasks = tasks if tasks is not None else registry.all_tasks()
    written: set[Path] = set()
    rows = records(scores)
    notes = run_notes(inputs.runs)
    declared = {tier: declarations(tasks, tier) for tier in {r["tier"] for r in rows}}
    expected = {(profile, tier): suite_tasks(tasks, tier)
                for profile, tier in group_by(rows, "profile", "tier")}
    env = environment()
    common = {"digest": inputs.digest, "tau_max": TAU_MAX}
    per_entry = group_by(rows, "entry")
    pages = Pages(inputs, per_entry, tasks, env, common, out, notes, declared, expected)
    inputs.run_ids("", "")  # the scored runs' ids, looked up once before the workers fork
    names = [name for (name,) in sorted(per_entry)  # names safe as file names
             if name in inputs.entries and NAME_PATTERN.match(name)]
    with workers(pages=pages.write) as submit:  # the workers start on the pages at once
        paths = [submit("pages", names[i:i + PAGES_PER_JOB]) for i in range(0, len(names), PAGES_PER_JOB)]
        site, jobs = sections(inputs, rows, tasks, notes, declared)  # meanwhile, here
        written.update(full_tables(site, env, common, out))
        for sec, key, job in jobs:
            sec["plots"] = shown_plots(task_plots(*job), sec, key, out, written)
        for done in paths:
            pages, problems = done()
            written.update(pages)
            for problem in problems:
                warn(problem)
    if tuned_views is None:
        tuned_views = tuned_views_under(out)
    write_text(out / "index.html", env.get_template("index.html.j2").render(
        sections=site, entries=sorted(inputs.entries), root="", view=inputs.view,
        tuned_views=tuned_views, top=TOP, **common))
    written.add(out / "index.html")
    write_text(out / "README.md", markdown(site, inputs.digest, inputs.view))
    written.add(out / "README.md")
    for stale in site_files(out):
        if stale not in written:  # an entry or plot that is gone since the last build
            stale.unlink()
    return sorted(written)


def tuned_views_under(out: Path) -> list[str]:
    """The tuned views built under `out` (tuned-budget-N folders with an index.html)."""
    return sorted(p.parent.name for p in out.glob("tuned-budget-*/index.html"))


def site_files(out: Path) -> list[Path]:
    """The files a build writes under `out` (a tuned view's subfolder is not among them)."""
    return [path for name in ("index.html", "README.md") if (path := out / name).is_file()] + [
        *out.glob("entries/*.html"), *out.glob("plots/*.svg"), *out.glob("tables/*.html")]


def differences(inputs: Inputs, scores: pd.DataFrame, out: Path) -> list[str]:
    """The files under `out` (relative paths) that a build from `inputs` and `scores` would now
    write differently, write where there is none, or delete: none when the site is what this
    ldbench builds. It builds into a temp folder and compares byte for byte, so a change of
    code or wording (a task's description, a profile's) is caught, not only of results."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="ldbench-check-") as tmp:
        built = build(inputs, scores, tmp, tuned_views=tuned_views_under(out))
        fresh = {p.relative_to(tmp): p.read_bytes() for p in built}
    have = {p.relative_to(out): p for p in site_files(out)}
    differ = [name for name, data in fresh.items() if name not in have or have[name].read_bytes() != data]
    return sorted(str(name) for name in [*differ, *(set(have) - set(fresh))])


def full_tables(site: list[dict], env: jinja2.Environment, common: dict, out: Path) -> list[Path]:
    """Write a page of its own for each table longer than TOP rows (index.html shows the first
    TOP and links to it); set each section's `full`: per table ('overall' or a task), the page's
    path from index.html, or '' where index.html shows every row."""
    page, written = env.get_template("table.html.j2"), []
    for sec in site:
        tables = [("overall", None, "Overall ranking", len(sec["overall"]))]
        tables += [(t["name"], t, t["name"], len(t["rows"])) for g in sec["groups"] for t in g["tasks"]]
        sec["full"] = {}
        for key, task, what, total in tables:
            rel = f"tables/{sec['id']}-{key}.html" if total > TOP else ""
            sec["full"][key] = rel
            if rel:
                anchor = f"{sec['id']}-{key}" if task else sec["id"]
                write_text(out / rel, page.render(root="../", sec=sec, task=task, what=what, total=total,
                                                  anchor=anchor, **common))
                written.append(out / rel)
    return written


@dataclass
class Pages:
    """What the entry pages are made of; `write(names)` writes those entries' pages."""

    inputs: Inputs
    per_entry: dict[tuple, list[dict]]
    tasks: dict[str, type[Task]]
    env: jinja2.Environment
    common: dict
    out: Path
    notes: dict[tuple, dict[str, dict]]
    declared: dict[str, dict[str, dict]]
    expected: dict[tuple, set[str]]

    def __post_init__(self) -> None:
        records_ = self.inputs.provenance.to_dict("records") if len(self.inputs.provenance) else []
        self.provenance = group_by(records_, "entry")

    def write(self, names: list[str]) -> tuple[list[Path], list[str]]:
        """Write these entries' pages; return the files and why some show no curves."""
        page, written = self.env.get_template("entry.html.j2"), []
        means, problems = self.means(names)
        for name in names:
            path = self.out / "entries" / f"{name}.html"
            context = entry_page(
                self.inputs.entries[name], self.per_entry[name,], self.provenance.get((name,), []),
                self.tasks, notes=self.notes, declared=self.declared, expected=self.expected,
                means_of=lambda profile, name=name: means.get((name, profile), {}),
                problem_of=lambda profile, name=name: problems.get((name, profile), ""))
            context["study"] = study_section(self.inputs.tuned_files.get(name))
            write_text(path, page.render(root="../", **context, **self.common))
            written.append(path)
        return written, [f"entry {e} on {p}: no curves shown: {why}"
                         for (e, p), why in sorted(problems.items())]

    def means(self, names: list[str]) -> tuple[dict[tuple[str, str], dict[str, small.Curves]],
                                               dict[tuple[str, str], str]]:
        """Per (entry, profile) of these entries: per task, its plotted curves' seed means; and
        why an (entry, profile) has none (its curves file missing or unreadable)."""
        out, problems = {}, {}
        files = sorted({(r["tier"], name, r["profile"]) for name in names for r in self.per_entry[name,]})
        for tier, part in itertools.groupby(files, key=lambda f: f[0]):
            keys = [(entry, profile) for _, entry, profile in part]
            tables, whys = zip(*(scored_curves(self.inputs, entry, profile, columns=list(PAGE_COLUMNS),
                                               dictionary=("run_id", "task", "metric"))
                                 for entry, profile in keys), strict=True)
            out.update(zip(keys, page_means(list(tables), self.declared[tier]), strict=True))
            problems.update((key, why) for key, why in zip(keys, whys, strict=True) if why)
        return out, problems


# What the workers do, set by `workers` before they fork (so that nothing is pickled to them).
WORK: dict = {}


def run_work(kind: str, what):
    """In a worker: `WORK[kind](what)`, e.g. write the pages of the entries `what`."""
    return WORK[kind](what)


@contextmanager
def workers(**work) -> Iterator:
    """`submit(kind, what)` starts `work[kind](what)` and returns what waits for its result.

    The entry pages (each reads its entry's curves and draws them) are written by forked
    processes, one per core up to WORKERS, while this process writes the rest of the site.
    With one core, or without fork, they run here, when waited for.
    """
    WORK.clear()
    WORK.update(work)
    try:
        count = min(WORKERS, os.cpu_count() or 1)
        if count < 2 or "fork" not in multiprocessing.get_all_start_methods():
            yield lambda kind, what: functools.partial(run_work, kind, what)
            return
        with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork")) as pool:
            yield lambda kind, what: pool.submit(run_work, kind, what).result
    finally:
        WORK.clear()


def recorded_digests(out: Path) -> dict[str, str]:
    """The input digests recorded in a built leaderboard's files ('' where missing)."""
    found = {}
    for name, pattern in (("index.html", INPUTS_META), ("README.md", INPUTS_COMMENT)):
        path = out / name
        match = pattern.search(path.read_text(encoding="utf-8")) if path.is_file() else None
        found[name] = match.group(1) if match else ""
    return found
