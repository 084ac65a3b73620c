"""Checks a submission folder (manifest, files, Parquet results) without importing any of its code."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections import Counter
from pathlib import Path

import pandas as pd

from suite import profiles, registry, results, runner
from suite.entry import Entry, EntryError, load_entry
from suite.task import Task

MIN_SEEDS = 5
MAX_FILE_BYTES = 16 * 2**20  # a standard-tier curves table of the whole suite is well under 1 MiB
MAX_SUBMISSION_BYTES = 64 * 2**20
RUN_LEVEL = [c for c in results.RUN_SCHEMA.names if c not in ("metric", "value", "direction", "applicable")]
MAX_NAME = 200  # characters of a curve name
# What a submission may hold besides results/<profile>/<tier>/{runs,curves}.parquet: source and
# text that `entry_hash` covers. Compiled or binary files (__pycache__/*.pyc, .so) could run
# instead of the reviewed source, and hidden files are easily missed in review: both are refused.
SOURCE_SUFFIXES = {".py", ".toml", ".md", ".rst", ".txt", ".json", ".yaml", ".yml", ".cfg"}
PLAIN_NAMES = {"LICENSE", "LICENCE", "COPYING", "NOTICE", "AUTHORS", "README"}
# CI installs the pinned torch and ldbench itself; a requirement must not move them.
PINNED = {"torch", "ldbench"}
STATUSES = ("ok", "diverged", "error", "not-applicable")
TRACKS = ("optimizer", "architecture", "recipe")
# A PEP 508 name, optional extras and version specifiers: no URLs, markers or pip options.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_SPEC = r"(?:===|==|!=|<=|>=|~=|<|>)\s*[A-Za-z0-9.*+!_-]+"
REQUIREMENT = re.compile(rf"^\s*{_NAME}\s*(?:\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?\s*"
                         rf"(?:{_SPEC}(?:\s*,\s*{_SPEC})*)?\s*$")
# Marks the line of a task without runs: the entry is incomplete (it predates the task).
INCOMPLETE = (" (the entry is incomplete: it never ran this task, e.g. a run with --tasks, or a task "
              "newer than its results)")
# Run-table columns every check reads; value may be NaN (no result) and a few are optional.
NOT_NULL = [c for c in results.RUN_SCHEMA.names
            if c not in ("value", "diverged_step", "error", "git_commit", "wall_time_s", "config",
                         "hparams", "suite_version", "created_at", "steps", "execution",
                         "track", "applicable")]  # the last two: null in older files


def clean(text: str) -> str:
    """`text` on one printable line."""
    text = " ".join(text.splitlines())
    # Odd bytes in file names come back from os as surrogates: print them as escapes.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def line(path: Path | str, what: str, fix: str) -> str:
    """One problem as one line: `path: what; fix`."""
    return clean(f"{path}: {what}; {fix}")


def validate_submission(folder: str | Path, *, tier: str = "standard", min_seeds: int = MIN_SEEDS,
                        tasks: dict[str, type[Task]] | None = None,
                        check_results: bool = True, incomplete: list[str] | None = None) -> list[str]:
    """Every problem of the submission in `folder`, one line each; [] when it is valid.

    Reads files only: the manifest as TOML, the results as Parquet. `tasks` is the suite the
    results must cover (default: every registered task). With an `incomplete` list, a task
    without any run (one added to the suite after the entry ran) is not a problem: its line
    (naming the command that fills it) goes to `incomplete` instead.
    """
    problems = submission_problems(Path(folder), tier=tier, min_seeds=min_seeds, tasks=tasks,
                                   check_results=check_results)
    if incomplete is None:
        return problems
    incomplete += [p for p in problems if INCOMPLETE in p]
    return [p for p in problems if INCOMPLETE not in p]


def submission_problems(folder: Path, *, tier: str, min_seeds: int,
                        tasks: dict[str, type[Task]] | None, check_results: bool) -> list[str]:
    """Every problem, incomplete tasks included (see validate_submission)."""
    problems = file_problems(folder)
    if problems:  # a symlink or an oversized file: read nothing further
        return problems
    entry, problems = manifest_problems(folder)
    if entry is None or problems or not check_results:  # results name the entry: fix it first
        return problems
    return problems + results_problems(folder, entry, tier=tier, min_seeds=min_seeds,
                                       tasks=tasks if tasks is not None else registry.all_tasks())


def file_problems(folder: Path) -> list[str]:
    """Symlinks, special files and files over the size caps, found without following links."""
    if folder.is_symlink():
        return [line(folder, "is a symbolic link", "submit the folder itself, not a link to it")]
    if not folder.is_dir():
        return [line(folder, "is not a directory", "pass the path of an entry folder")]
    problems, total = [], 0
    for root, dirs, files in os.walk(folder, followlinks=False, onerror=None):
        for name in sorted(dirs + files):
            path = Path(root) / name
            try:
                info = path.lstat()
            except OSError as err:
                problems.append(line(path, f"cannot be read ({err.strerror})", "fix its permissions"))
                continue
            named = name_problem(folder, path)
            if named:
                problems.append(named)
                if stat.S_ISDIR(info.st_mode):
                    dirs.remove(name)  # nothing inside it can be accepted either
            elif stat.S_ISLNK(info.st_mode):
                problems.append(line(path, "is a symbolic link (it may point outside the folder)",
                                     "replace it with the file itself"))
            elif stat.S_ISREG(info.st_mode):
                total += info.st_size
                if info.st_size > MAX_FILE_BYTES:
                    problems.append(line(path, f"is {info.st_size:,} bytes, over the "
                                         f"{MAX_FILE_BYTES // 2**20} MiB cap per file",
                                         "keep data out of the entry (standard-tier results are small)"))
                elif not is_results(folder, path):
                    problems += text_problems(path)
            elif not stat.S_ISDIR(info.st_mode):
                problems.append(line(path, "is not a regular file or folder", "remove it"))
    if total > MAX_SUBMISSION_BYTES:
        problems.append(line(folder, f"holds {total / 2**20:.1f} MiB, over the "
                             f"{MAX_SUBMISSION_BYTES // 2**20} MiB cap per submission",
                             "remove large files that are not the entry's code or results"))
    return problems


def name_problem(folder: Path, path: Path) -> str | None:
    """Why `path` may not be in a submission by its name alone, or None."""
    name = path.name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 come back from os as surrogates
        return line(path, "has a file name that is not valid UTF-8", "rename it with UTF-8 characters")
    if name == "__pycache__" or name.endswith((".pyc", ".pyo")):
        return line(path, "is compiled bytecode, which Python may run instead of the reviewed source",
                    "delete it (the entry is submitted as source only)")
    if name.startswith(".") and name.endswith(".tmp"):
        return line(path, "is a temp file left by a killed `ldbench run`", "delete it (a rerun of "
                    "`ldbench run` into that folder removes it too)")
    if name.startswith("."):
        return line(path, "is a hidden file or folder", "remove it (hidden files are not part of an "
                    "entry and are easily missed in review)")
    return None


def is_results(folder: Path, path: Path) -> bool:
    return path.relative_to(folder).parts[0] == "results"


def text_problems(path: Path) -> list[str]:
    """A source or text file, in UTF-8: what a reviewer reads is what runs."""
    if path.suffix not in SOURCE_SUFFIXES and path.name not in PLAIN_NAMES:
        return [line(path, "is not source, text or results", "remove it: a submission holds "
                     f"{sorted(SOURCE_SUFFIXES)} files and results/<profile>/<tier>/*.parquet only")]
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        return [line(path, f"is not UTF-8 text (byte {err.start})", "save it as UTF-8")]
    except OSError as err:
        return [line(path, f"cannot be read ({err.strerror})", "fix its permissions")]
    return []


def manifest_problems(folder: Path) -> tuple[Entry | None, list[str]]:
    """The parsed manifest (None if broken) and its problems, including the folder name."""
    try:
        entry = load_entry(folder)
    except EntryError as err:  # its message already reads "path: problem; fix"
        return None, [clean(str(err))]
    except (OSError, RecursionError, ValueError) as err:  # unreadable or absurdly nested TOML
        return None, [line(folder / "entry.toml", f"cannot be read ({type(err).__name__})",
                           "write a plain UTF-8 TOML manifest")]
    problems = requirement_problems(folder / "entry.toml", entry.requirements)
    if folder.resolve().name != entry.name:
        problems.append(line(folder / "entry.toml", f"name {entry.name!r} differs from the folder "
                             f"name {folder.resolve().name!r}",
                             f"rename the folder to {entry.name!r} or change the name"))
    return entry, problems


def requirement_problems(manifest: Path, requirements: list[str]) -> list[str]:
    """Plain package requirements only: CI installs them, so no pip options and no URLs."""
    problems = []
    for text in requirements:
        if not REQUIREMENT.match(text):
            problems.append(line(manifest, f"requirement {text!r} is not a plain package requirement",
                                 'write a name and version range from the package index, e.g. '
                                 '"lion-pytorch>=0.2"'))
        elif re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~]", text.strip())[0]).lower() in PINNED:
            problems.append(line(manifest, f"requirement {text!r} names a package that CI pins",
                                 f"remove it: CI installs {sorted(PINNED)} at the suite's versions"))
    return problems


def results_problems(folder: Path, entry: Entry, *, tier: str, min_seeds: int,
                     tasks: dict[str, type[Task]]) -> list[str]:
    """Problems of `folder/results/<profile>/<tier>/`, for every profile present."""
    root = folder / "results"
    rerun = f"ldbench run {folder} --tier {tier} --seeds {min_seeds}"
    if not root.is_dir():
        return [line(root, f"is missing: no {tier}-tier results", f"run `{rerun}`")]
    problems, found = [], 0
    known_profiles = profiles.available()
    for prof in sorted(root.iterdir()):
        if prof.name not in known_profiles or not prof.is_dir():
            problems.append(line(prof, "is not a known profile folder",
                                 f"results go under results/<profile>/<tier>/ with a profile "
                                 f"among {sorted(known_profiles)}"))
            continue
        for sub in sorted(prof.iterdir()):
            if sub.name not in registry.TIERS or not sub.is_dir():
                problems.append(line(sub, "is not a tier folder",
                                     f"remove it; tiers are {list(registry.TIERS)}"))
            else:  # every tier present is checked; only `tier` must be complete
                found += sub.name == tier
                again = f"ldbench run {folder} --tier {sub.name} --seeds {min_seeds}"
                problems += tier_problems(sub, entry, tier=sub.name, profile=prof.name,
                                          min_seeds=min_seeds, tasks=tasks, rerun=again,
                                          complete=sub.name == tier)
    if not found:
        problems.append(line(root, f"has no {tier}-tier results for any profile",
                             f"run `{rerun}`"))
    return problems


def read(path: Path) -> tuple[pd.DataFrame | None, list[str]]:
    """A results table, or the line saying why it cannot be used."""
    if not path.is_file():
        return None, [line(path, "is missing", "rerun `ldbench run`, which writes both tables")]
    try:
        return results.read_capped(path), []  # rows and decoded bytes capped
    except results.ResultsError as err:
        text = clean(str(err))
        return None, [text if ";" in text else f"{text}; regenerate it with `ldbench run`"]


def parts_problem(parts: Path, rerun: str) -> str:
    """What a parts/ folder left in a tier folder holds, and what removes it."""
    try:
        complete = results.complete_parts(parts.parent)
    except results.ResultsError as err:  # a folder named like a part
        return clean(str(err))
    if complete:
        return line(parts, "holds runs not yet compacted into runs.parquet and curves.parquet",
                    f"rerun `{rerun}`, which compacts them at its end")
    if parts.is_dir() and any(parts.iterdir()):  # a run killed between its curves and runs files
        return line(parts, "holds only curves of runs that never finished (interrupted between "
                    "their two files); no run is lost", f"delete {parts}")
    return line(parts, "is an empty folder left by an interrupted run", f"delete {parts}")


def tier_problems(where: Path, entry: Entry, *, tier: str, profile: str, min_seeds: int,
                  tasks: dict[str, type[Task]], rerun: str, complete: bool = True) -> list[str]:
    """Problems of one tier folder; `complete`: it must also cover the suite with enough seeds."""
    expected = {results.RUNS_FILE, results.CURVES_FILE}
    try:
        inside = sorted(where.iterdir())
    except OSError as err:  # the results may be fine: say how to reach them, not to remake them
        return [line(where, f"cannot be read ({err.strerror})",
                     "give your user read and execute permission on it (chmod u+rx)")]
    problems = [parts_problem(p, rerun) if p.name == results.PARTS_DIR
                else line(p, "is not a results table", "remove it")
                for p in inside if p.name not in expected]
    runs, bad_runs = read(where / results.RUNS_FILE)
    curves, bad_curves = read(where / results.CURVES_FILE)
    problems += bad_runs + bad_curves
    for table, name in ((runs, results.RUNS_FILE), (curves, results.CURVES_FILE)):
        extra = [] if table is None else [c for c in table.columns if c not in results.SCHEMAS[name].names]
        if extra:
            problems.append(line(where / name, f"columns {[str(c)[:40] for c in extra[:5]]} are not in "
                                 "the results schema", "regenerate it with `ldbench run`"))
    if runs is None:
        return problems
    path, digest = where / results.RUNS_FILE, entry.hash
    nulls = null_problems(path, runs, NOT_NULL) + (
        null_problems(where / results.CURVES_FILE, curves, [c for c in results.CURVE_SCHEMA.names
                                                             if c != "value"])
        if curves is not None else [])
    if nulls:  # every check below reads these columns
        return problems + nulls
    identity = identity_problems(path, runs, entry, digest, tier=tier, profile=profile, rerun=rerun)
    problems += identity + status_problems(path, runs, rerun)
    if complete:  # run ids hash the entry's name and files: when those differ, every id would too
        problems += coverage_problems(path, runs, entry, digest, tier=tier, profile=profile,
                                      min_seeds=min_seeds, tasks=tasks, rerun=rerun,
                                      check_ids=not identity)
    if curves is not None:
        problems += curve_problems(where / results.CURVES_FILE, curves, runs, entry, tier=tier)
    return problems


def null_problems(path: Path, table: pd.DataFrame, columns: list[str]) -> list[str]:
    empty = [c for c in columns if table[c].isna().any()]
    return [line(path, f"columns {empty} have missing values", "regenerate it with `ldbench run`")
            ] if empty else []


def clip(text: str, limit: int) -> str:
    """The first line of untrusted `text`, at most `limit` characters, cut between words."""
    first = text.splitlines()[0] if text else ""
    if len(first) <= limit:
        return first
    cut = first[:limit].rsplit(" ", 1)[0] if " " in first[:limit] else first[:limit]
    return cut + " …"


def mismatch(path: Path, runs: pd.DataFrame, column: str, want: str, fix: str) -> list[str]:
    found = sorted({str(v) for v in runs[column] if str(v) != want})
    if not found:
        return []
    shown = ", ".join(repr(clip(v, 64)) for v in found[:3]) + (" ..." if len(found) > 3 else "")
    return [line(path, f"column {column} holds {shown}, expected {want!r}", fix)]


def identity_problems(path: Path, runs: pd.DataFrame, entry: Entry, digest: str, *, tier: str,
                      profile: str, rerun: str) -> list[str]:
    """The rows say they are this entry's files, on this folder's tier and profile."""
    fresh = f"delete {path.parent} and run `{rerun}`"
    problems = mismatch(path, runs, "entry", entry.name, "results must come from this entry: " + fresh)
    problems += mismatch(path, runs, "entry_version", entry.version, "the manifest's version changed: "
                         + fresh)
    problems += mismatch(path, runs, "tier", tier, "move them to results/<profile>/<tier>/ of the "
                         "tier they ran on")
    problems += mismatch(path, runs, "profile", profile, "move them to the folder of the profile "
                         "they ran on")
    problems += mismatch(path, runs, "entry_hash", digest,
                         "the entry's files changed after the runs (or hold stale results): " + fresh)
    unknown = sorted({str(s) for s in runs["status"]} - set(STATUSES))
    if unknown:
        problems.append(line(path, f"unknown run status {unknown}", f"statuses are {list(STATUSES)}"))
    if (runs["seed"] < 0).any():
        problems.append(line(path, "negative seeds", "seeds are 0, 1, 2, ...: " + fresh))
    for text in sorted(set(runs["fingerprint"].astype(str)))[:50]:
        if not is_json_object(text):
            problems.append(line(path, "a fingerprint is not a JSON object", fresh))
            break
    return problems


def status_problems(path: Path, runs: pd.DataFrame, rerun: str) -> list[str]:
    """Each run's status agrees with its values: no result unless ok, a step if diverged; the
    run-level columns repeated on each metric row agree."""
    problems, fix = [], f"the table was edited; delete {path.parent} and run `{rerun}`"
    if runs.drop_duplicates(RUN_LEVEL)["run_id"].duplicated().any():
        problems.append(line(path, "the metric rows of one run disagree on a run-level column "
                             "(status, seed, overrides, ...)", fix))
    status, value = runs["status"], runs["value"].astype(float)
    for name in ("diverged", "error"):
        kept = (status == name) & value.notna()
        if kept.any():
            problems.append(line(path, f"{int(kept.sum())} metric rows of {name} runs hold values "
                                 "(a run without a result has NaN values)", fix))
    diverged = status == "diverged"
    if runs.loc[diverged, "diverged_step"].isna().any() or runs.loc[~diverged, "diverged_step"].notna().any():
        problems.append(line(path, "diverged_step is set on runs that did not diverge or missing on "
                             "runs that did", fix))
    elif (runs.loc[diverged, "diverged_step"] < 0).any():
        problems.append(line(path, "a negative diverged_step", fix))
    failed = status.isin(["error", "not-applicable"])  # `error` says why
    if runs.loc[failed, "error"].isna().any() or runs.loc[~failed, "error"].notna().any():
        problems.append(line(path, "the error column is set on runs without an error or missing "
                             "on runs with one (or not-applicable runs without their reason)", fix))
    return problems + applicability_problems(path, runs, fix)


def applicability_problems(path: Path, runs: pd.DataFrame, fix: str) -> list[str]:
    """One known track per file; a metric that does not apply has no value, and every metric
    of a not-applicable run does not apply."""
    problems = []
    tracks = set(runs["track"].dropna().astype(str))
    if tracks - set(TRACKS) or len(tracks) > 1:
        problems.append(line(path, f"column track holds {sorted(tracks)[:3]}, expected one of "
                             f"{list(TRACKS)}", fix))
    applicable = runs["applicable"].astype("boolean").fillna(True)
    whole = runs["status"] == "not-applicable"
    if (whole & applicable).any() or (~applicable & runs["value"].astype(float).notna()).any():
        problems.append(line(path, "a metric that does not apply holds a value, or a not-applicable "
                             "run has a metric that applies", fix))
    optimizer = runs["track"].fillna("optimizer").astype(str) == "optimizer"
    if (optimizer & (whole | ~applicable)).any():  # it trains each task's own reference model
        problems.append(line(path, "an optimizer-track run is recorded as not applicable, which only "
                             "an architecture entry's model can be", fix))
    return problems


def is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def coverage_problems(path: Path, runs: pd.DataFrame, entry: Entry, digest: str, *, tier: str,
                      profile: str, min_seeds: int, tasks: dict[str, type[Task]], rerun: str,
                      check_ids: bool = True) -> list[str]:
    """Every task present with current versions, enough distinct seeds, no duplicates, no gaps."""
    problems = []
    for name in sorted(set(runs["task"].astype(str)) - set(tasks)):
        problems.append(line(path, f"task {name!r} is not in this suite",
                             f"delete {path.parent} and run `{rerun}`"))
    for name, cls in tasks.items():
        rows = runs[runs["task"] == name]
        again = f"run `{rerun} --tasks {name}`"
        if rows.empty:
            problems.append(line(path, f"task {name!r} has no runs{INCOMPLETE}", again))
            continue
        stale = sorted({int(v) for v in rows["task_version"]} - {cls.version})
        if stale:
            problems.append(line(path, f"task {name!r} ran at version {stale}, the suite's is "
                                 f"{cls.version} (stale results)",
                                 f"{again}: its runs at version {cls.version} replace the stale ones"))
            continue
        problems += task_problems(path, rows, cls(cls.tiers[tier]), entry, digest, tier=tier,
                                  profile=profile, min_seeds=min_seeds, again=again,
                                  check_ids=check_ids, whole=f"delete {path.parent} and run `{rerun}`")
    return problems


def task_problems(path: Path, rows: pd.DataFrame, task: Task, entry: Entry, digest: str, *,
                  tier: str, profile: str, min_seeds: int, again: str, check_ids: bool,
                  whole: str) -> list[str]:
    """The runs of one task: no overrides, consistent ids, declared metrics, finite values.
    `again` reruns the task (its missing runs join the folder); `whole` remakes the folder,
    the fix where runs must go (no command removes some runs of a folder)."""
    where, problems = f"task {task.name!r}", []
    runs: dict[str, tuple] = {}  # run_id -> (seed, overrides, status, error) of its first row
    shared = False
    for rid, seed, overrides, status, error in zip(rows["run_id"], rows["seed"], rows["overrides"],
                                                   rows["status"], rows["error"], strict=True):
        first = runs.setdefault(rid, (int(seed), str(overrides), status, error))
        shared |= first[0] != int(seed)
    overridden = sum(o.strip() != "{}" for _, o, _, _ in runs.values())
    if overridden:
        problems.append(line(path, f"{where}: {overridden} runs used --set or --hparam "
                             f"overrides, so they are not the {tier} tier of this entry",
                             f"{whole} (every task; put hyperparameters in entry.toml, and write "
                             "runs with overrides elsewhere with --out)"))
    if shared:
        problems.append(line(path, f"{where}: a run_id is shared by different seeds",
                             "the table was edited; regenerate it: " + again))
    per_seed = Counter(seed for seed, _, _, _ in runs.values())
    if any(n > 1 for n in per_seed.values()) and not overridden:  # else: said above
        problems.append(line(path, f"{where}: duplicate runs for seeds "
                             f"{sorted(s for s, n in per_seed.items() if n > 1)}",
                             f"keep one run per seed: {whole}"))
    forged = [seed for rid, (seed, _, _, _) in runs.items() if rid != runner.run_id(
        entry=entry, entry_hash=digest, task=task, seed=seed, tier=tier, profile=profile, overrides={})]
    if forged and check_ids and not overridden:
        problems.append(line(path, f"{where}: run ids of seeds {sorted(forged)[:5]} do not match "
                             "their entry, task, seed, tier and profile", "regenerate them: " + again))
    errors = sorted((seed, str(error)) for seed, _, status, error in runs.values() if status == "error")
    if errors:
        problems.append(line(path, f"{where}: seeds {[s for s, _ in errors]} failed with an error "
                             f"({clip(errors[0][1], 240)!r})", "fix the entry and " + again))
    done = {seed for seed, _, status, _ in runs.values() if status in results.DONE_STATUSES}
    if len(done) < min_seeds:
        problems.append(line(path, f"{where}: {len(done)} seeds with a result, {min_seeds} required",
                             again))
    return problems + metric_problems(path, rows, task, where=where, again=again)


def metric_problems(path: Path, rows: pd.DataFrame, task: Task, *, where: str, again: str) -> list[str]:
    """Declared metrics once per run, with their direction; values finite (or +inf for a target
    not reached) and within bounds in ok runs. Plain Python: a task's rows are few."""
    declared, problems = task.metrics(), []
    per_run: dict[str, set[str]] = {}
    twice, wrong_direction, bad, outside = False, set(), {}, {}
    columns = [rows[c] for c in ("run_id", "metric", "direction", "status")] + [rows["value"].astype(float)]
    off = ~rows["applicable"].astype("boolean").fillna(True).to_numpy(dtype=bool)
    inapplicable = set(zip(rows["run_id"][off], rows["metric"][off], strict=True))  # NaN there
    for rid, metric, direction, status, value in zip(*columns, strict=True):
        seen = per_run.setdefault(rid, set())
        twice |= metric in seen
        seen.add(metric)
        spec = declared.get(metric)
        if spec is None:
            continue
        if direction != spec.direction:
            wrong_direction.add(metric)
        if status != "ok":
            continue
        if math.isnan(value) and (spec.undefined_ok or (rid, metric) in inapplicable):
            continue  # declared: undefined in some finished runs
        if not math.isfinite(value) and not (spec.steps_to_target and value == math.inf):
            bad.setdefault(metric, value)
        elif math.isfinite(value) and not spec.bounds[0] <= value <= spec.bounds[1]:
            outside.setdefault(metric, value)
    if twice:
        problems.append(line(path, f"{where}: a metric appears twice in one run", "regenerate: " + again))
    missing = sorted(set().union(*(set(declared) - ms for ms in per_run.values())))
    extra = sorted(set().union(*per_run.values()) - set(declared))
    if missing or extra:
        problems.append(line(path, f"{where}: metrics missing {missing[:5]}, undeclared {extra[:5]}",
                             "regenerate with this suite: " + again))
    for metric in declared:  # in declaration order, one line per metric and kind
        if metric in wrong_direction:
            problems.append(line(path, f"{where}: metric {metric!r} has the wrong direction",
                                 "regenerate with this suite: " + again))
        if metric in bad:
            problems.append(line(path, f"{where}: metric {metric!r} is {bad[metric]} in a run whose "
                                 "status is ok", "a run without a result must say so (status "
                                 "diverged or error): regenerate: " + again))
        elif metric in outside:
            low, high = declared[metric].bounds
            problems.append(line(path, f"{where}: metric {metric!r} is {outside[metric]:g}, outside "
                                 f"its valid range [{low:g}, {high:g}]", "regenerate: " + again))
    return problems


def curve_problems(path: Path, curves: pd.DataFrame, runs: pd.DataFrame, entry: Entry, *,
                   tier: str) -> list[str]:
    problems = mismatch(path, curves, "entry", entry.name, "curves must come from this entry")
    for task, steps in curves.groupby("task")["step"]:  # evaluations happen at steps 0..steps
        last = registry.tier_steps(task, tier)
        if last is not None and (steps.min() < 0 or steps.max() > last):
            problems.append(line(path, f"{task}'s curves have steps outside [0, {last}] (the tier's "
                                 f"steps), e.g. {steps[(steps < 0) | (steps > last)].iloc[0]}",
                                 "regenerate with `ldbench run`"))
    orphans = set(curves["run_id"]) - set(runs["run_id"])
    if orphans:
        problems.append(line(path, f"{len(orphans)} runs have curves but no rows in runs.parquet",
                             "regenerate both tables with `ldbench run`"))
    if curves.duplicated(["run_id", "step", "metric"]).any():
        problems.append(line(path, "a curve has two rows for one run and step",
                             "the table was edited or merged by hand; regenerate both tables with "
                             "`ldbench run`"))
    names = sorted({str(m) for m in curves["metric"]})
    odd = [m for m in names if not m.isprintable() or not 0 < len(m) <= MAX_NAME]
    if odd:
        problems.append(line(path, f"curve names such as {odd[0][:40]!r} are empty, over {MAX_NAME} "
                             "characters or hold control characters", "regenerate with `ldbench run`"))
    ok = set(runs.loc[runs["status"] == "ok", "run_id"])
    if ok - set(curves["run_id"]):
        problems.append(line(path, f"{len(ok - set(curves['run_id']))} finished runs have no curves",
                             "regenerate both tables with `ldbench run`"))
    return problems
