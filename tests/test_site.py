"""The static leaderboard: tracks, pages, tables, plots, escaping, staleness, a headless-Chromium check."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from suite import interval, registry, results, score, validate
from suite.cli import main
from suite.site import build
from suite.site.plots import PANELS, seed_means, task_plots
from suite.site.synthetic import synthetic_entry
from suite.task import Curve, Task
from suite.tasks.mode_connectivity import path_name

XSS = "<script>alert(1)</script>"
REPO = Path(__file__).resolve().parents[1]
# The fixture's entries per track: more optimizer entries than a panel plot shows, a failed
# and an incomplete one; on the architecture track a model lacking product() and patterns()
# (deep-linear-modes and teacher-student not applicable, in-context-regression's pattern
# metrics not applicable) and an incomplete recipe.
OPTIMIZER = ["alpha", "beta", "gamma", "untrusted", "flaky", "partial", "slow"]
ARCHITECTURE = ["mlp", "tiny-transformer", "transformer-recipe"]
SECTION = "cpu-2core-standard"


def build_site(roots: list[Path], out: Path, *, rename: dict[str, str] | None = None) -> score.Inputs:
    """score + build through the Python API; `rename` relabels entries in the scores only."""
    inputs = score.collect(roots)
    table = score.score(inputs)
    score.write_scores(table, out / score.SCORES_FILE, inputs.digest)
    table, _ = score.read_scores(out / score.SCORES_FILE)
    if rename:
        table["entry"] = table["entry"].replace(rename)
        inputs.entries = {rename.get(k, k): v for k, v in inputs.entries.items()}
    build.build(inputs, table, out)
    return inputs


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    rng = np.random.default_rng(0)
    subs = root / "submissions"
    for name, speed in (("alpha", 1.0), ("beta", 1.4), ("gamma", 2.0), ("slow", 2.8)):
        synthetic_entry(subs, name, rng=rng, speed=speed)
    # Descriptions and authors are free text: the page must show them, never run them.
    synthetic_entry(subs, "untrusted", rng=rng, speed=1.2,
                    description=f"{XSS} and \"quotes\" & <b>tags</b>",
                    authors=(f'"><img src=x onerror=alert(2)>{XSS}',))
    synthetic_entry(subs, "flaky", rng=rng, speed=1.1, failed={"teacher-student": 5, "modular-addition": 2})
    synthetic_entry(subs, "partial", rng=rng, speed=0.9, skip=("markov-attention", "mode-connectivity"))
    synthetic_entry(subs, "mlp", rng=rng, speed=1.0, track="architecture")
    synthetic_entry(subs, "tiny-transformer", rng=rng, speed=1.3, track="architecture",
                    lacks=("product", "patterns"))
    synthetic_entry(subs, "transformer-recipe", rng=rng, speed=0.8, track="recipe",
                    lacks=("product", "logits_and_attention"), skip=("fine-grained-collapse",))
    build_site([subs], root / "leaderboard")
    return root


def article(html: str, track: str, task: str) -> str:
    """The HTML of one task's section on one track."""
    start = html.index(f'<article id="{SECTION}-{track}-{task}">')
    return html[start:html.index("</article>", start)]


def section(html: str, track: str) -> str:
    start = html.index(f'<section id="{SECTION}-{track}"')
    return html[start:html.index("</section>", start)]


def table_entries(html: str) -> list[str]:
    """data-entry of the rows of the first table in `html`."""
    table = html[html.index("<tbody>"):html.index("</tbody>")]
    return re.findall(r'<tr data-entry="([^"]+)"', table)


def test_index_has_the_ranking_every_task_table_and_plots(site):
    out = site / "leaderboard"
    html = (out / "index.html").read_text()
    tasks = score.registry.all_tasks()
    for track in ("optimizer", "architecture"):
        assert f'<table class="sortable" id="{SECTION}-{track}-overall">' in html
        for name in tasks:  # every task has a table on both tracks (n/a rows included)
            assert f'id="{SECTION}-{track}-{name}-table"' in article(html, track, name)
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) >= len(tasks) and all((out / src).is_file() for src in images)
    assert all(src.endswith(".svg") and src.startswith("plots/") for src in images)
    for kind in ("modes", "stage-times", "subspace", "accuracy", "barrier"):
        assert any(f"-{kind}.svg" in src for src in images), kind
    assert "http://" not in html and "https://" not in html  # no external assets
    for name in ("alpha", "beta", "gamma", "untrusted"):
        page = (out / "entries" / f"{name}.html").read_text()
        assert "Provenance" in page and "entry hash" in page and "cpu-2core" in page
    readme = (out / "README.md").read_text()
    assert re.search(r"^\| rank +\| entry +\| score", readme, re.M)
    assert readme.count("### ") == 2 * len(tasks) and "![" in readme
    assert "## Optimizer track" in readme and "## Architecture track" in readme


def test_both_tracks_are_ranked_apart_and_labelled(site):
    out = site / "leaderboard"
    html = (out / "index.html").read_text()
    optimizer, architecture = section(html, "optimizer"), section(html, "architecture")
    assert "<h2>Optimizer track" in optimizer and "<h2>Architecture track" in architecture
    assert sorted(table_entries(optimizer)) == sorted(OPTIMIZER)
    assert sorted(table_entries(architecture)) == sorted(ARCHITECTURE)
    recipe = re.search(r'<tr data-entry="transformer-recipe".*?</tr>', architecture, re.S).group(0)
    assert 'class="badge recipe"' in recipe
    mlp = re.search(r'<tr data-entry="mlp".*?</tr>', architecture, re.S).group(0)
    assert 'class="badge recipe"' not in mlp
    for name, words in (("alpha", "optimizer track"), ("mlp", "architecture track"),
                        ("transformer-recipe", "architecture track, as a recipe")):
        page = (out / "entries" / f"{name}.html").read_text()
        assert re.search(rf"<dt>track</dt><dd[^>]*>{words}", page), name
        assert f'index.html#{SECTION}-{words.split()[0]}"' in page  # links to its track's ranking
    # Scores: ranks restart on each track.
    table, _ = score.read_scores(out / score.SCORES_FILE)
    overall = table[table["level"] == "overall"]
    assert set(overall.loc[overall["track"] == "architecture", "entry"]) == set(ARCHITECTURE)
    assert (overall.groupby("track")["rank"].min() == 1).all()


def test_not_applicable_incomplete_and_failed_look_different(site):
    html = (site / "leaderboard" / "index.html").read_text()
    # Not applicable: the whole task (the model lacks product()), with the reason as a title.
    dlm = article(html, "architecture", "deep-linear-modes")
    row = re.search(r'<tr data-entry="tiny-transformer" class="na">.*?</tr>', dlm, re.S).group(0)
    assert 'class="badge na" title="the model has no product(), which deep-linear-modes reads' in row
    assert re.search(r'<td class="num na"[^>]*title="the model has no product\(\)[^"]*">n/a</td>', row)
    assert table_entries(dlm)[-2:] == ["tiny-transformer", "transformer-recipe"] or \
        table_entries(dlm)[-2:] == ["transformer-recipe", "tiny-transformer"]  # n/a rows last
    # ... and one metric (pattern scores need patterns()), in an otherwise applicable task.
    icr = article(html, "architecture", "in-context-regression")
    row = re.search(r'<tr data-entry="tiny-transformer">.*?</tr>', icr[icr.index("<details"):], re.S).group(0)
    assert 'title="not applicable: the model has no patterns(), which this metric reads">n/a' in row
    assert "rank" in re.search(r'<tr data-entry="tiny-transformer">.*?</tr>', icr, re.S).group(0)
    # Incomplete: shown with a badge naming the missing tasks, never ranked as a failure.
    overall = section(html, "optimizer")
    row = re.search(r'<tr data-entry="partial">.*?</tr>', overall, re.S).group(0)
    assert 'class="badge incomplete" title="no runs of: markov-attention, mode-connectivity' in row
    assert 'class="rank' not in row.split("</td>")[0]
    assert table_entries(overall)[-1] == "partial"  # after every ranked entry
    markov = article(html, "optimizer", "markov-attention")
    assert "partial" not in table_entries(markov)
    assert 'incomplete</span> No runs of markov-attention' in markov
    # Failed: a badge with the first reason, its seeds counted as failures (ranked).
    ts = article(html, "optimizer", "teacher-student")
    row = re.search(r'<tr data-entry="flaky">.*?</tr>', ts, re.S).group(0)
    assert 'class="badge failed" title="RuntimeError: a synthetic failure">failed 5/5</span>' in row
    assert '<td class="num failed"' in row and "no result 5/5" in row and 'class="rank' in row
    css = (build.TEMPLATES / "base.html.j2").read_text()
    looks = [re.search(rf"\.badge\.{word} {{([^}}]*)}}", css).group(1)
             for word in ("na", "incomplete", "failed")]
    assert len(set(looks)) == 3  # three different looks
    table, _ = score.read_scores(site / "leaderboard" / score.SCORES_FILE)
    partial = table[(table["entry"] == "partial") & (table["level"] == "overall")].iloc[0]
    assert pd.isna(partial["rank"]) and not partial["complete"]


def figures(html: str) -> list[tuple[str, str]]:
    """(img src, figcaption HTML) of each figure in `html`."""
    return re.findall(r'<img src="([^"]+)"[^>]*>\s*<figcaption[^>]*>(.*?)</figcaption>', html, re.S)


def test_every_plot_shows_every_entry_of_its_track_or_names_those_left_out(site):
    out = site / "leaderboard"
    html = (out / "index.html").read_text()
    left_out = 0
    for track in ("optimizer", "architecture"):
        for task in registry.all_tasks():
            part = article(html, track, task)
            entries = table_entries(part)
            for src, caption in figures(part):
                svg = (out / src).read_text()
                missing = [e for e in entries if f">{e}</text>" not in svg]
                for entry in missing:
                    assert f'<a href="entries/{entry}.html">{entry}</a>' in caption, (src, entry)
                left_out += len(missing)
                if missing:
                    assert f"Shows {len(entries) - len(missing)} of the {len(entries)} entries" in caption
                else:
                    assert "Shows every entry of this track" in caption
    assert left_out > 0  # 7 optimizer entries > PANELS, and n/a entries on the architecture track
    assert len(OPTIMIZER) > PANELS
    # An entry's own page has its own curves: each task's declared plots, for it alone.
    page = (out / "entries" / "slow.html").read_text()
    assert page.count("<svg") >= len(registry.all_tasks()) and "Mode strength curves" in page
    page = (out / "entries" / "tiny-transformer.html").read_text()
    assert "Mode strength curves" not in page  # deep-linear-modes does not apply to it


def test_entry_pages_state_each_targets_median_and_ratio(site):
    """What the family score takes from a task is on the entry's page: the target's median
    steps over seeds and its ratio to the best entry's, from the scores table."""
    scores_, _ = score.read_scores(site / "leaderboard" / score.SCORES_FILE)
    targets = scores_[(scores_["level"] == "metric") & scores_["target"].fillna(False)
                      & (scores_["track"] == "optimizer")]
    checked = 0
    for entry in ("alpha", "slow", "flaky"):
        page = (site / "leaderboard" / "entries" / f"{entry}.html").read_text()
        for r in targets[targets["entry"] == entry].itertuples():
            if math.isfinite(r.time_to_target):
                text = (f"Target {r.metric}: median over seeds {r.time_to_target:,.0f} steps, "
                        f"{r.ratio:.2f}× the steps of the best entry")
            elif r.failures == r.seeds and r.unreached == 0:  # every seed failed: no result
                text = f"Target {r.metric}: no seed has a result (every run failed)"
            else:
                text = f"Target {r.metric}: reached by half the seeds or fewer"
            assert text in page, (entry, text)
            checked += 1
    assert checked == 3 * len(registry.all_tasks())


def test_entry_pages_mark_diagnostics_as_the_tables_do_without_a_direction(site):
    """A diagnostic metric has no better direction to show: an entry's page says "(diagnostic)",
    as the tables and `ldbench show` do, where it showed the arrow of its declared direction."""
    page = (site / "leaderboard" / "entries" / "alpha.html").read_text()
    sections = dict(re.findall(r'<h4><a href="[^"]*">([^<]+)</a>(.*?)(?=<h4>|$)', page, re.S))
    shown = 0
    for task, cls in registry.all_tasks().items():
        rows = re.findall(r'<td title="[^"]*">([^<]+)</td>', sections[task])
        for name, spec in cls(cls.tiers["standard"]).metrics().items():
            for cell in (r for r in rows if r.split(" ")[0] == name):
                assert ("(diagnostic)" in cell) == (spec.role == "diagnostic"), (task, cell)
                assert ("↓" in cell or "↑" in cell) == (spec.role != "diagnostic"), (task, cell)
                shown += 1
    assert shown >= len(registry.all_tasks()) * 3


def test_curves_carry_the_tables_interval_as_a_band(site):
    out = site / "leaderboard"
    html = (out / "index.html").read_text()
    for src, caption in figures(html):
        if src.endswith("-stage-times.svg"):  # dots: the interval as bars
            assert f"bars: the {interval.METHOD}" in caption
            continue
        assert f"shaded bands: the {interval.METHOD}" in caption and "fewer than 3 seeds" in caption
        assert 'fill-opacity="0.2"' in (out / src).read_text(), src  # the band
    page = (out / "entries" / "alpha.html").read_text()
    assert re.search(r'<polygon points="[^"]+" fill="#[0-9a-f]{6}" fill-opacity="0.2"/>', page)
    assert f"shaded bands the {interval.METHOD}" in page


def test_seed_means_give_the_t_interval_clipped_to_the_curve_bounds():
    rows = [("a", seed, 0, "acc", v) for seed, v in enumerate((0.9, 0.99, 1.0))]
    rows += [("b", seed, 0, "acc", v) for seed, v in enumerate((0.5, 0.6))]
    means = seed_means(pd.DataFrame(rows, columns=["entry", "seed", "step", "metric", "value"]),
                       {"acc": (0.0, 1.0)}).set_index("entry")
    mean, low, high = interval.t_interval([0.9, 0.99, 1.0], bounds=(0.0, 1.0))
    assert means.loc["a", "value"] == pytest.approx(mean) and high == 1.0
    assert (means.loc["a", "low"], means.loc["a", "high"]) == pytest.approx((low, high))
    assert np.isnan(means.loc["b", "low"]) and np.isnan(means.loc["b", "high"])  # 2 seeds: none


def test_tables_lead_with_ranked_metrics_and_fold_the_diagnostics(site):
    html = (site / "leaderboard" / "index.html").read_text()
    part = article(html, "optimizer", "mode-connectivity")
    main, folded = part.split('<details class="diagnostics">')
    declared = registry.make_task("mode-connectivity", "standard").metrics()
    heads = lambda text: [re.sub(r"<wbr>| [↓↑]|\s*\(diagnostic\)", "", h)  # noqa: E731
                          for h in re.findall(r'<th title="[^"]*">([^<]*(?:<wbr>[^<]*)*)</th>', text)]
    assert heads(main) == ["entry", "steps to target", "ratio"] + [
        m for m, spec in declared.items() if spec.role != "diagnostic"]
    assert heads(folded) == ["entry"] + [m for m, spec in declared.items() if spec.role == "diagnostic"]
    assert "loss_barrier/<wbr>spawn_0" in main  # long names wrap instead of widening the table
    assert 'class="sortable metrics"' in main  # the entry column stays in view (sticky)


def test_hyperparameter_tables_list_default_first(site):
    page = (site / "leaderboard" / "entries" / "alpha.html").read_text()
    assert "[hparams.deep-linear-modes]" in page  # sorts before "default" by name
    assert page.index("[hparams.default]") < page.index("[hparams.deep-linear-modes]")


def test_synthetic_entries_of_both_tracks_validate(site):
    for name in ("alpha", "mlp", "tiny-transformer"):
        assert validate.validate_submission(site / "submissions" / name) == [], name


def test_a_preview_build_leaves_no_tracked_file_modified():
    """submissions/README.md builds the preview into preview/, which git ignores."""
    guide = (REPO / "submissions" / "README.md").read_text()
    assert "ldbench score --out preview && ldbench leaderboard build --out preview" in guide
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    built = ["preview/index.html", "preview/README.md", "preview/scores.parquet",
             "preview/entries/my-optimizer.html", "preview/plots/cpu-2core-standard-optimizer-x.svg"]
    ignored = subprocess.run(["git", "check-ignore", *built], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout.split() == built


def test_untrusted_text_renders_as_text(site):
    page = (site / "leaderboard" / "entries" / "untrusted.html").read_text()
    assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "onerror=alert(2)>" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert page.count("<script") == 1  # only the page's own table-sorting script
    for svg in (site / "leaderboard" / "plots").glob("*.svg"):
        assert "<script" not in svg.read_text()


def test_an_entry_named_like_a_script_renders_as_text(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("alpha", "beta"):
        synthetic_entry(tmp_path / "subs", name, rng=rng)
    build_site([tmp_path / "subs"], tmp_path / "lb", rename={"alpha": XSS})
    html = (tmp_path / "lb" / "index.html").read_text()
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert sorted(p.name for p in (tmp_path / "lb" / "entries").iterdir()) == ["beta.html"]
    for svg in (tmp_path / "lb" / "plots").glob("*.svg"):
        assert XSS not in svg.read_text()  # legends name entries: matplotlib escapes them


def test_a_rebuild_from_the_same_results_is_byte_identical(site, tmp_path):
    build_site([site / "submissions"], tmp_path / "again")
    def files(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())

    first, second = files(site / "leaderboard"), files(tmp_path / "again")
    assert first == second
    for rel in first:
        if rel.suffix != ".parquet":
            assert (site / "leaderboard" / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_long_tables_show_their_top_rows_and_link_a_page_with_every_row(site, tmp_path, monkeypatch):
    """index.html shows the first TOP rows of a table and links a page of its own with all of
    them (in the same order, the same table id); tables that fit have no page, and the pages
    of tables that shrank below TOP are removed on the next build."""
    full = (site / "leaderboard" / "index.html").read_text()  # TOP > entries: every row
    monkeypatch.setattr(build, "TOP", 3)
    out = tmp_path / "lb"
    build_site([site / "submissions"], out)
    html = (out / "index.html").read_text()
    for task in ("overall", "teacher-student", "mode-connectivity"):
        ident = f"{SECTION}-optimizer-{task}" + ("" if task == "overall" else "-table")
        every = table_entries(full[full.index(f'id="{ident}"'):])
        top = table_entries(html[html.index(f'id="{ident}"'):])
        assert len(every) > 3 and top == every[:3], task  # (partial has no mode-connectivity)
        page = out / "tables" / f"{SECTION}-optimizer-{task}.html"
        assert f'<a href="tables/{page.name}">All {len(every)} entries' in html
        text = page.read_text()
        assert table_entries(text[text.index(f'id="{ident}"'):]) == every, task
        assert 'href="../entries/alpha.html"' in text and 'href="../index.html#' in text
        assert f'data-table="{ident}' in text  # the filter box is on the full page
        if task == "mode-connectivity":  # and every entry without runs of the task
            assert re.search(r'No runs of mode-connectivity on this track.*href="../entries/partial.html"',
                             text, re.S)
    assert f'data-table="{SECTION}-optimizer-overall"' not in html  # not on the truncated one
    assert not list((out / "tables").glob(f"{SECTION}-architecture-*"))  # 3 entries: they fit
    monkeypatch.setattr(build, "TOP", 25)
    build_site([site / "submissions"], out)
    assert not list((out / "tables").glob("*.html"))
    assert (out / "index.html").read_text() == full


def curves(names: list[str], entries=("a", "b")) -> pd.DataFrame:
    rows = [(e, seed, step, name, 1.0 / (1 + step)) for e in entries for seed in (0, 1)
            for step in (0, 1, 10, 100) for name in names]
    return pd.DataFrame(rows, columns=["entry", "seed", "step", "metric", "value"])


def test_plots_follow_the_task_declarations_and_skip_absent_curves():
    metrics = pd.DataFrame(columns=["entry", "metric", "mean", "ci_low", "ci_high"])

    def keys(task: str, names: list[str]) -> list[str]:
        specs = registry.make_task(task, "smoke").plots()
        return [p.key for p in task_plots(specs, curves(names), metrics, ["a", "b"])]

    assert keys("deep-linear-modes", []) == []
    assert keys("shared-representation", ["subspace_distance", "effective_rank"]) == ["subspace"]
    # Mode curves; the stage-time dots need metric rows, absent here.
    assert keys("deep-linear-modes", ["mode/0", "mode/1", "mode/2", "loss"]) == ["modes"]
    assert keys("modular-addition", ["train_acc", "test_acc", "train_loss"]) == ["accuracy"]
    assert keys("modular-addition", ["train_acc"]) == []  # a panel needs every curve it declares
    assert keys("teacher-student", ["train_error", "test_error"]) == ["errors"]
    paths = [path_name("matched", "error", 0.0), path_name("independent", "error", 0.5)]
    assert keys("mode-connectivity", paths) == ["barrier"]


def test_a_task_that_declares_no_plot_gets_one_of_its_curves():
    class Bare(Task):
        name, family = "bare", "new-family"

        def curves(self):
            return {"loss": Curve("a loss"), "other": Curve("another"), "end": Curve("x", at_end=True)}

    specs = Bare({}).plots()
    assert [(p.kind, p.curves) for p in specs] == [("panels", ("loss", "other"))]
    metrics = pd.DataFrame(columns=["entry", "metric", "mean", "ci_low", "ci_high"])
    assert [p.key for p in task_plots(specs, curves(["loss", "other"]), metrics, ["a"])] == ["curves"]


def test_leaderboard_check_fails_when_results_change(site, tmp_path):
    roots = ["--root", str(site / "submissions")]
    out = ["--out", str(tmp_path / "lb")]
    runner = CliRunner()
    scored = runner.invoke(main, ["score", *roots, *out])
    assert scored.exit_code == 0, scored.output
    assert re.search(r"architecture \(recipe\) +incomplete +transformer-recipe", scored.output)
    built = runner.invoke(main, ["leaderboard", "build", *roots, *out])
    assert built.exit_code == 0, built.output
    checked = runner.invoke(main, ["leaderboard", "check", *roots, *out])
    assert checked.exit_code == 0 and "up to date" in checked.output
    assert "byte for byte" in checked.output
    # New results without a rebuild: stale.
    copy = tmp_path / "subs"
    shutil.copytree(site / "submissions", copy)
    path = copy / "beta/results/cpu-2core/standard/runs.parquet"
    runs = results.read_table(path)
    runs.loc[0, "wall_time_s"] += 1.0
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    stale = runner.invoke(main, ["leaderboard", "check", "--root", str(copy), *out])
    assert stale.exit_code == 1 and "stale" in stale.output and "ldbench score" in stale.output
    rebuild = runner.invoke(main, ["leaderboard", "build", "--root", str(copy), *out])
    assert rebuild.exit_code == 2 and "scores are older than the results or manifests; run `ldbench " \
        "score --tier standard` first" in rebuild.output
    # the scores of the standard tier built as the smoke tier: the tier is named, not "older"
    other = runner.invoke(main, ["leaderboard", "build", *roots, *out, "--tier", "smoke"])
    assert other.exit_code == 2 and "scores of the standard tier, not the smoke tier; run `ldbench " \
        "score --tier smoke` first" in other.output, other.output
    empty = runner.invoke(main, ["leaderboard", "check", "--root", str(tmp_path / "none"), *out])
    assert empty.exit_code == 0 and "nothing to check" in empty.output


def test_leaderboard_check_rebuilds_and_compares(site, tmp_path, monkeypatch):
    """Same results, other code: a rebuild differs, and check names the files (the digest alone
    missed a profile's description changing)."""
    roots, out = ["--root", str(site / "submissions")], ["--out", str(tmp_path / "lb")]
    runner = CliRunner()
    for command in (["score"], ["leaderboard", "build"]):
        assert runner.invoke(main, [*command, *roots, *out]).exit_code == 0
    check = ["leaderboard", "check", *roots, *out]
    assert runner.invoke(main, check).exit_code == 0
    # Wording changed in the code: index.html and README.md would be written differently.
    monkeypatch.setitem(build.TRACK_TEXT, "optimizer", ("Optimizer track", "Reworded."))
    reworded = runner.invoke(main, check)
    assert reworded.exit_code == 1 and "index.html" in reworded.output
    assert "differ from what this ldbench builds" in reworded.output
    monkeypatch.undo()
    # A page edited by hand, a stray page, and scores altered under the right digest.
    page = tmp_path / "lb/entries/alpha.html"
    page.write_text(page.read_text() + "<!-- edited -->")
    (tmp_path / "lb/entries/ghost.html").write_text("stray")
    path = tmp_path / "lb" / score.SCORES_FILE
    scores, digest = score.read_scores(path)
    scores.loc[scores["score"].notna().idxmax(), "score"] += 0.01
    score.write_scores(scores, path, digest)
    edited = runner.invoke(main, check)
    assert edited.exit_code == 1, edited.output
    named = edited.output.split("error: ")[1]
    for name in ("entries/alpha.html", "entries/ghost.html", score.SCORES_FILE):
        assert name in named


# -- headless Chromium over the DevTools protocol (a pipe: no extra Python packages) ---------------

class Chromium:
    """Debian's chromium driven through --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-framed JSON)."""

    def __init__(self, exe: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="ldbench-chromium-")
        cmd_r, self.cmd_w = os.pipe()
        self.res_r, res_w = os.pipe()

        def child_fds() -> None:  # dup first: os.pipe fds are close-on-exec, dup2 clears it
            a, b = os.dup(cmd_r), os.dup(res_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-pipe",
             f"--user-data-dir={self.profile}", "--window-size=1280,900", "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(res_w)
        self.buffer, self.last_id, self.events = b"", 0, []
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params):
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive(timeout)
            if reply.get("id") == self.last_id:
                assert "error" not in reply, reply
                return reply["result"]

    def receive(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.res_r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self.res_r, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def open(self, path: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=path.resolve().as_uri())
        deadline = time.monotonic() + 60
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            self.receive(max(0.1, deadline - time.monotonic()))

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen since the last `open`."""
        self.call("Runtime.evaluate", session=True, expression="0")  # flush pending events
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(str(params.get("args")))
            elif event["method"] == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails")))
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, TimeoutError, EOFError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.res_r)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    chrome = Chromium(exe)
    yield chrome
    chrome.close()


def test_page_in_a_browser_has_both_tracks_tables_plots_and_no_console_errors(site, browser):
    browser.open(site / "leaderboard" / "index.html")
    tracks = browser.evaluate("""Array.from(document.querySelectorAll('section.track')).map(s => [
        s.dataset.track, s.querySelectorAll('table').length, s.querySelectorAll('tbody tr').length,
        Array.from(s.querySelectorAll('img')).map(i => [i.getAttribute('src'), i.complete,
                                                         i.naturalWidth])])""")
    assert [t[0] for t in tracks] == ["optimizer", "architecture"]
    n_tasks = len(score.registry.all_tasks())
    for track, tables, rows, images in tracks:
        assert tables >= 1 + n_tasks and rows >= 2 * tables, track
        assert len(images) >= n_tasks - 2 and all(done and width > 100 for _, done, width in images), images
    # Sorting and filtering run without errors and do what they say, on either track.
    table, _ = score.read_scores(site / "leaderboard" / score.SCORES_FILE)
    overall = table[(table["level"] == "overall") & (table["track"] == "optimizer")]
    first = browser.evaluate("""(() => {
        const table = document.querySelector('#cpu-2core-standard-optimizer-overall');
        const th = table.querySelector('th:nth-child(3)');
        th.click();  // score: larger is better, so the first click sorts descending
        return table.querySelector('tbody tr').dataset.entry; })()""")
    assert first == overall.loc[overall["score"].idxmax(), "entry"]
    # Cells without a value (failed seeds, n/a) sort last whichever way; Enter sorts too.
    tails = browser.evaluate("""(() => Array.from(document.querySelectorAll('table.sortable.metrics'))
        .map(table => Array.from(table.querySelectorAll('th')).slice(1).map((th, i) => {
            const order = () => Array.from(table.tBodies[0].rows).map(r => r.cells[i + 1].dataset.sort);
            th.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}));
            const first = order();
            th.click();
            return [first, order()]; })).flat())()""")
    blank_last = [all(v == "" for v in order[order.index(""):]) if "" in order else True
                  for pair in tails for order in pair]
    assert tails and all(blank_last)
    assert any("" in order for pair in tails for order in pair)  # the check saw some
    shown = """(id, q) => {
        const box = document.querySelector(`input[data-table^="${id}"]`);
        box.value = q; box.dispatchEvent(new Event('input'));
        return box.dataset.table.split(' ').map(t => Array.from(document.getElementById(t).tBodies[0].rows)
            .filter(r => !r.hidden).map(r => r.dataset.entry)); }"""
    assert browser.evaluate(f"({shown})('{SECTION}-optimizer-overall', 'gam')") == [["gamma"]]
    assert browser.evaluate(f"({shown})('{SECTION}-architecture-overall', 'trans')") == [
        sorted(["tiny-transformer", "transformer-recipe"])]
    # A task's filter covers its ranked table and its folded diagnostics.
    assert browser.evaluate(f"({shown})('{SECTION}-optimizer-teacher-student-table', 'fla')") == [
        ["flaky"], ["flaky"]]
    folded = browser.evaluate(f"""(() => {{
        const d = document.querySelector('#{SECTION}-architecture-in-context-regression details');
        const seen = () => [d.open, d.querySelector('table').checkVisibility()];
        const before = seen();
        d.querySelector('summary').click();
        return [before, seen()]; }})()""")
    assert folded == [[False, False], [True, True]]
    na = browser.evaluate(f"""Array.from(document.querySelectorAll(
        '#{SECTION}-architecture-deep-linear-modes td.na')).map(td => td.title)""")
    assert na and all("product()" in t for t in na)
    title = browser.evaluate("document.title")
    assert browser.errors() == [] and "leaderboard" in title
    for name in ("mlp", "alpha"):  # an entry's own curves, drawn inline
        browser.open(site / "leaderboard" / "entries" / f"{name}.html")
        widths = browser.evaluate("Array.from(document.querySelectorAll('figure.small svg'))"
                                  ".map(s => s.getBoundingClientRect().width)")
        assert len(widths) >= n_tasks - 2 and min(widths) > 200, (name, widths)
        assert browser.errors() == []
    browser.open(site / "leaderboard" / "entries" / "untrusted.html")
    text = browser.evaluate("document.querySelector('header.top p').textContent")
    assert XSS in text  # shown as text, not run as a script
    assert browser.errors() == []


def test_screenshot_of_the_leaderboard(site, browser, tmp_path):
    import matplotlib.image

    browser.open(site / "leaderboard" / "index.html")
    shot = browser.call("Page.captureScreenshot", session=True, format="png")
    png = base64.b64decode(shot["data"])
    (tmp_path / "leaderboard.png").write_bytes(png)
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")  # (height, width, 4)
    assert pixels.shape[1] == 1280 and pixels.shape[0] >= 600
    # The dark header band on top and a light page below: something was drawn.
    assert pixels[10, :, :3].mean() < 0.3 and pixels[-50:, :, :3].mean() > 0.7
    assert pixels[..., :3].std() > 0.05


@pytest.mark.parametrize("failures, unreached, text", [
    (0, 0, "2 [1, 3]"),
    (1, 1, "2 [1, 3] (not reached 1/5)"),
    (2, 1, "2 [1, 3] (not reached 1/5, no result 1/5)"),
    (3, 3, "2 (not reached 3/5, n < 3: no interval)"),
    (5, 5, "not reached 5/5"),
    (5, 0, "no result 5/5"),
])
def test_cells_say_not_reached_for_infinite_values_and_no_result_for_nan(failures, unreached, text):
    """The words of `ldbench show` (suite.report.describe), whatever the metric."""
    from suite.site.build import cell_text

    some = 5 - failures >= 3  # an interval needs 3 finite values
    row = {"seeds": 5, "failures": failures, "unreached": unreached, "mean": 2.0,
           "ci_low": 1.0 if some else float("nan"), "ci_high": 3.0 if some else float("nan")}
    assert cell_text(row) == text


def test_dollar_signs_in_names_are_text_not_mathtext():
    """Entry and curve names like broken mathtext (they passed validate once) must not stop the
    build: the legend and titles name them literally."""
    metrics = pd.DataFrame(columns=["entry", "metric", "mean", "ci_low", "ci_high"])
    entries = ["$a_{", "b$"]
    for task, names in (("modular-addition", ["train_acc", "test_acc"]),
                        ("teacher-student", ["train_error", "test_error"])):
        specs = registry.make_task(task, "smoke").plots()
        plots = task_plots(specs, curves(names, entries=tuple(entries)), metrics, entries)
        assert plots, task
        svg = "".join(p.svg for p in plots)
        assert "$a_{" in svg and "b$" in svg  # the legend names the entries literally

    class Odd(Task):  # a task whose curve itself is named like mathtext
        name, family = "odd", "new-family"

        def curves(self):
            return {"$\\frac{$": Curve("odd"), "other": Curve("x")}

    plots = task_plots(Odd({}).plots(), curves(["$\\frac{$", "other"]), metrics, ["a", "b"])
    assert "$\\frac{$" in "".join(p.svg for p in plots)


def test_build_takes_the_inputs_score_recorded_and_only_while_they_match_the_files(site, tmp_path):
    """`score` records what it read (inputs.parquet); `leaderboard build` takes that record,
    not the runs files, and the site is the same as one built from the files."""
    roots = ["--root", str(site / "submissions")]
    runner = CliRunner()
    for out in ("recorded", "read"):
        assert runner.invoke(main, ["score", *roots, "--out", str(tmp_path / out)]).exit_code == 0
    (tmp_path / "read" / score.INPUTS_FILE).unlink()  # no record: build reads the files again
    for out in ("recorded", "read"):
        built = runner.invoke(main, ["leaderboard", "build", *roots, "--out", str(tmp_path / out)])
        assert built.exit_code == 0, built.output
    for path in (tmp_path / "read").rglob("*"):
        if path.is_file() and path.suffix != ".parquet":
            rel = path.relative_to(tmp_path / "read")
            assert path.read_bytes() == (tmp_path / "recorded" / rel).read_bytes(), rel
    record = tmp_path / "recorded" / score.INPUTS_FILE
    digest = score.read_scores(tmp_path / "recorded" / score.SCORES_FILE)[1]
    folders = score.entry_folders([site / "submissions"])
    inputs = score.recorded_inputs(record, digest, folders)
    assert inputs is not None and sorted(inputs.entries) == sorted(OPTIMIZER + ARCHITECTURE)
    assert len(inputs.runs) and set(inputs.provenance["entry"]) <= set(inputs.entries)
    assert score.recorded_inputs(record, "0" * 64, folders) is None  # other files: not taken
    # The same files in another folder (a copy; or relative paths from another working
    # directory) have the same digest, but the record names folders that are not these.
    copy = tmp_path / "copy" / "submissions"
    shutil.copytree(site / "submissions", copy)
    assert score.recorded_inputs(record, digest, score.entry_folders([copy])) is None


def test_entry_page_curves_are_clipped_to_their_own_tasks_bounds():
    """Two tasks may name a curve alike with other bounds (train_error: [0, 1] and [0, inf))."""
    spec = registry.make_task("teacher-student", "smoke").plots()[0]
    declared = {task: {"plots": [spec], "bounds": {"train_error": bounds, "test_error": bounds}}
                for task, bounds in (("a", (0.0, 1.0)), ("b", (0.0, np.inf)))}
    rows = [(task, seed, 0, "train_error", v) for task in ("a", "b")
            for seed, v in enumerate((0.9, 1.0, 1.0))]
    table = pd.DataFrame(rows, columns=["task", "seed", "step", "metric", "value"])
    (means,) = build.page_means([pa.Table.from_pandas(table, preserve_index=False)], declared)
    assert means["a"]["train_error"][3, 0] == 1.0 and means["b"]["train_error"][3, 0] > 1.0
    assert means["a"]["train_error"][1, 0] == means["b"]["train_error"][1, 0]


def test_entry_page_means_match_a_pandas_groupby_and_scipys_t_interval():
    """Seed means and intervals of many pages at once, against an independent computation per
    (page, task, curve, step): finite values only, n < 3 without an interval, each task's own
    bounds; undeclared curves and rows without a task are left out; plain or dictionary-encoded
    columns, in one batch or several."""
    from scipy import stats
    rng = np.random.default_rng(7)
    spec = registry.make_task("teacher-student", "smoke").plots()[0]
    declared = {task: {"plots": [spec], "bounds": {"train_error": b, "test_error": b}}
                for task, b in (("a", (0.0, 1.0)), ("b", (-np.inf, np.inf)))}
    frames = []
    for _ in range(3):
        rows = [(task, seed, step, name, rng.choice([rng.uniform(0, 1.2), np.nan, np.inf], p=[0.8, 0.1, 0.1]))
                for task in ("a", "b", "c") for seed in range(int(rng.integers(1, 6)))
                for step in (0, 5, 50) for name in ("train_error", "test_error", "other")]
        rows.append((None, 0, 0, "train_error", 0.5))
        frames.append(pd.DataFrame(rows, columns=["task", "seed", "step", "metric", "value"]))
    tables = [pa.Table.from_pandas(f, preserve_index=False) for f in frames]
    tables[1] = pa.Table.from_batches(tables[1].to_batches(max_chunksize=40))  # several batches
    tables[2] = tables[2].set_column(0, "task", tables[2].column("task").dictionary_encode())
    means = build.page_means([*tables, None], declared)
    assert means[3] == {}
    for page, frame in enumerate(frames):
        finite = frame[np.isfinite(frame["value"]) & frame["task"].isin(["a", "b"])
                       & frame["metric"].isin(["train_error", "test_error"])]
        expected = finite.groupby(["task", "metric", "step"])["value"].agg(["mean", "std", "count"])
        shown = {(t, n) for t in ("a", "b") for n in ("train_error", "test_error")
                 if ((frame["task"] == t) & (frame["metric"] == n)).any()}
        assert {(t, n) for t, c in means[page].items() for n in c} == shown
        for (task, name, step), (mean, sd, n) in expected.iterrows():
            steps, got, low, high = means[page][task][name]
            at = list(steps).index(step)
            assert got[at] == pytest.approx(mean, rel=1e-12)
            if n < 3:
                assert np.isnan(low[at]) and np.isnan(high[at])
                continue
            half = stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
            lo, hi = declared[task]["bounds"][name]
            assert low[at] == pytest.approx(max(mean - half, lo), rel=1e-12)
            assert high[at] == pytest.approx(min(mean + half, hi), rel=1e-12)


def test_index_dots_name_every_entry_and_span_a_fraction_of_a_decade_with_ticks():
    metrics = pd.DataFrame([(e, m, 300.0 + 10 * i, 280.0 + 10 * i, 330.0 + 10 * i)
                            for i, e in enumerate(("a", "b<"))
                            for m in ("stage_time/mode_0", "stage_time/mode_1")],
                           columns=["entry", "metric", "mean", "ci_low", "ci_high"])
    specs = [s for s in registry.make_task("deep-linear-modes", "smoke").plots() if s.kind == "dots"]
    (plot,) = task_plots(specs, curves([]), metrics, ["a", "b<"])
    assert plot.shown == ("a", "b<") and ">a</text>" in plot.svg and ">b&lt;</text>" in plot.svg
    assert plot.svg.count("<circle") == 4 and len(re.findall(r">\d+</text>", plot.svg)) >= 2  # ticks


def test_a_step_anywhere_in_int64_moves_no_other_curve():
    """Steps near the ends of int64 in one table (a submitted file may hold any) leave the seed
    means of every other table as they are alone, on the entry pages and the index plots."""
    spec = registry.make_task("teacher-student", "smoke").plots()[0]
    declared = {"a": {"plots": [spec], "bounds": {"train_error": (0.0, 1.0)}}}
    good = pd.DataFrame([("a", s, step, "train_error", 0.1 * s + step / 100) for s in range(3)
                         for step in (0, 10, 50)], columns=["task", "seed", "step", "metric", "value"])
    for steps in ((2**62, 0, 5), (-(2**63), 2**63 - 1, 0)):
        bad = good.assign(step=np.resize(np.array(steps, dtype=np.int64), len(good)))
        alone, together = (build.page_means([pa.Table.from_pandas(f, preserve_index=False) for f in fs],
                                            declared) for fs in ([good], [good, bad]))
        np.testing.assert_array_equal(together[0]["a"]["train_error"], alone[0]["a"]["train_error"])
        assert sorted(together[1]["a"]["train_error"][0]) == sorted({float(s) for s in steps})
        both = pd.concat([good.assign(entry="good"), bad.assign(entry="bad")])
        means = seed_means(both, {"train_error": (0.0, 1.0)})
        pd.testing.assert_frame_equal(means[means["entry"] == "good"].reset_index(drop=True),
                                      seed_means(good.assign(entry="good"), {"train_error": (0.0, 1.0)}))
    nulls = good.astype({"step": "Int64"}).assign(entry="good")
    nulls.loc[::4, "step"] = pd.NA  # a row without a step is no point of a curve
    assert len(seed_means(nulls)) == len(seed_means(nulls.dropna(subset=["step"])))


def test_charts_of_values_near_the_float_limits_draw_without_overflowing():
    from suite.site import small
    for logy in (False, True):
        for values in ([1e308, 1.0, 2.0], [1e300, 1e-300, 1.0], [-1e308, 1e308, 0.5]):
            nans = np.full(3, np.nan)
            series = small.Series("a", np.array([0.0, 10.0, 100.0]), np.array(values), nans, nans, "#000000")
            svg = small.svg([series], steps=True, logy=logy, xlabel="step", ylabel="y")
            assert svg.startswith("<svg") and "nan" not in svg and len(svg) < 10_000


def test_an_entry_whose_curves_cannot_be_read_says_so_and_shows_no_other_curves(site, tmp_path):
    """A symlinked curves file (to another entry's) is not followed; an unreadable one is named,
    on the entry's page and by the build, in one line each; the other pages keep their plots."""
    subs = tmp_path / "submissions"
    shutil.copytree(site / "submissions", subs, symlinks=True)
    linked = subs / "alpha/results/cpu-2core/standard/curves.parquet"
    linked.unlink()
    linked.symlink_to(subs / "beta/results/cpu-2core/standard/curves.parquet")
    torn = subs / "gamma/results/cpu-2core/standard/curves.parquet"
    torn.write_bytes(torn.read_bytes()[: len(torn.read_bytes()) // 2])
    inputs = score.collect([subs])
    warned = []
    build.build(inputs, score.score(inputs), tmp_path / "lb", warn=warned.append)
    assert warned[0] == ("entry alpha on cpu-2core: no curves shown: its curves.parquet is not a plain file "
                         "(a symlink, folder or special file)")
    assert len(warned) == 2 and warned[1].startswith(
        "entry gamma on cpu-2core: no curves shown: its curves.parquet is unreadable: "
        "not a readable Parquet file (")
    assert warned[1].endswith("delete it and rerun `ldbench run`") and str(torn) not in warned[1]
    pages = {name: (tmp_path / "lb" / "entries" / f"{name}.html").read_text()
             for name in ("alpha", "beta", "gamma")}
    assert "No curves shown: its curves.parquet is not a plain file" in pages["alpha"]
    assert "No curves shown: its curves.parquet is unreadable" in pages["gamma"]
    assert "No curves shown" not in pages["beta"]
    lines = lambda page: page.count("<path d=")  # noqa: E731 - curves drawn on a page
    assert lines(pages["alpha"]) == lines(pages["gamma"]) == 0 < lines(pages["beta"])


def test_only_the_scored_runs_curves_are_drawn_and_a_repeated_row_draws_none(site, tmp_path):
    """A results folder also keeps runs the scores leave out (a `--set` run beside the plain
    ones; a run of older entry files): their curves are not pooled into the scored runs' on
    the entry page or the index plots, which stay byte for byte as without them. A curves file
    that gives a (run, step, curve) twice shows none, and says why."""
    subs = tmp_path / "submissions"
    shutil.copytree(site / "submissions", subs)
    folder = subs / "beta/results/cpu-2core/standard"
    runs, curves = (results.read_table(folder / name) for name in (results.RUNS_FILE, results.CURVES_FILE))
    first = runs["run_id"].iloc[0]
    extra = runs[runs["run_id"] == first].assign(run_id="extra-run", overrides='{"set": {"steps": 10}}')
    old = runs[runs["run_id"] == first].assign(run_id="older-files", entry_hash="0" * 16)
    drawn = curves[curves["run_id"] == first]
    more = pd.concat([drawn.assign(run_id="extra-run", value=drawn["value"] * 7 + 3),
                      drawn.assign(run_id="older-files", value=-drawn["value"])])
    results.write_atomic(results.to_table(pd.concat([runs, extra, old]), results.RUN_SCHEMA,
                                          results.RUNS_FILE), folder / results.RUNS_FILE)
    results.write_atomic(results.to_table(pd.concat([curves, more]), results.CURVE_SCHEMA,
                                          results.CURVES_FILE), folder / results.CURVES_FILE)
    twice = subs / "gamma/results/cpu-2core/standard" / results.CURVES_FILE
    gamma = results.read_table(twice)
    results.write_atomic(results.to_table(pd.concat([gamma, gamma.iloc[:1]]), results.CURVE_SCHEMA,
                                          results.CURVES_FILE), twice)
    inputs = score.collect([subs])
    assert "extra-run" not in set(inputs.runs["run_id"]) and len(inputs.warnings) == 2  # both left out
    warned = []
    build.build(inputs, score.score(inputs), tmp_path / "lb", warn=warned.append)
    same = site / "leaderboard"
    digest = re.compile(r"[0-9a-f]{12,64}")  # of the inputs (which changed), whole and short
    page = lambda root, name: digest.sub("", (root / "entries" / name).read_text())  # noqa: E731
    assert page(tmp_path / "lb", "beta.html") == page(same, "beta.html")
    for plot in sorted((same / "plots").glob("*.svg")):
        if "gamma" not in plot.read_text():  # gamma's curves are gone from the index plots
            assert (tmp_path / "lb/plots" / plot.name).read_bytes() == plot.read_bytes(), plot.name
    assert warned == ["entry gamma on cpu-2core: no curves shown: its curves.parquet gives a (run, step, "
                      "curve) more than once; `ldbench validate` names the rows"]
    assert "No curves shown: its curves.parquet gives a (run, step, curve) more than once" in page(
        tmp_path / "lb", "gamma.html")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["r1", "r2", "r3"]), st.one_of(st.none(), st.integers(-3, 3)),
                          st.sampled_from(["loss", "acc", None])), max_size=12), st.booleans())
def test_a_repeated_curve_row_is_found_as_pandas_finds_it(rows, encoded):
    """repeats_a_row against pandas' duplicated on (run, step, curve), rows without a step or a
    curve name aside (they are drawn nowhere)."""
    frame = pd.DataFrame(rows, columns=["run_id", "step", "metric"]).astype({"step": "Int64"})
    schema = pa.schema([("run_id", pa.string()), ("step", pa.int64()), ("metric", pa.string()),
                        ("value", pa.float64())])  # the curves file's types (an empty frame has none)
    table = pa.Table.from_pandas(frame.assign(value=0.0), schema=schema, preserve_index=False)
    if encoded:  # as the entry pages read them
        table = table.set_column(0, "run_id", pc.dictionary_encode(table["run_id"]))
    stepped = frame.dropna(subset=["step", "metric"])
    assert build.repeats_a_row(table) == bool(stepped.duplicated(["run_id", "step", "metric"]).any())


def test_curves_outside_the_tiers_steps_or_none_at_all_are_not_drawn(site, tmp_path):
    """validate refuses curves at steps a run never takes (a step of -50 drew a spike at the
    axis; one of 1e15 squeezed the real curve into a corner) and a curves file without the
    runs' curves: the page says why, draws none."""
    subs = tmp_path / "submissions"
    shutil.copytree(site / "submissions", subs)
    path = subs / "beta/results/cpu-2core/standard" / results.CURVES_FILE
    curves = results.read_table(path)
    task = curves["task"].iloc[0]
    results.write_atomic(results.to_table(pd.concat([curves, curves.iloc[:1].assign(step=-50)]),
                                          results.CURVE_SCHEMA, results.CURVES_FILE), path)
    empty = subs / "gamma/results/cpu-2core/standard" / results.CURVES_FILE  # drew empty axes
    results.write_atomic(results.to_table(results.read_table(empty).iloc[:0], results.CURVE_SCHEMA,
                                          results.CURVES_FILE), empty)
    inputs = score.collect([subs])
    warned = []
    build.build(inputs, score.score(inputs), tmp_path / "lb", warn=warned.append)
    last = registry.make_task(task, "standard").config["steps"]
    said = f"{task}'s steps outside [0, {last}] (the tier's steps); `ldbench validate` names the rows"
    assert warned == [f"entry beta on cpu-2core: no curves shown: its curves.parquet has {said}",
                      "entry gamma on cpu-2core: no curves shown: its curves.parquet holds no rows of "
                      "its scored runs"]
    assert f"No curves shown: its curves.parquet has {task}&#39;s steps outside" in (
        tmp_path / "lb/entries/beta.html").read_text()
