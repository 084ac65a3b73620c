"""The static leaderboard: pages, tables, plots, escaping, staleness, and a headless-Chromium check."""

from __future__ import annotations

import base64
import io
import json
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
import pytest
from click.testing import CliRunner

from suite import registry, results, score
from suite.cli import main
from suite.site import build
from suite.site.plots import task_plots
from suite.site.synthetic import synthetic_entry
from suite.task import Curve, Task
from suite.tasks.mode_connectivity import path_name

XSS = "<script>alert(1)</script>"


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
    for name, speed in (("alpha", 1.0), ("beta", 1.4), ("gamma", 2.0)):
        synthetic_entry(root / "submissions", name, rng=rng, speed=speed)
    # Descriptions and authors are free text: the page must show them, never run them.
    synthetic_entry(root / "submissions", "untrusted", rng=rng, speed=1.2,
                    description=f"{XSS} and \"quotes\" & <b>tags</b>",
                    authors=(f'"><img src=x onerror=alert(2)>{XSS}',))
    build_site([root / "submissions"], root / "leaderboard")
    return root


def test_index_has_the_ranking_every_task_table_and_plots(site):
    out = site / "leaderboard"
    html = (out / "index.html").read_text()
    tasks = score.registry.all_tasks()
    assert html.count("<table") == 1 + len(tasks)
    for name in tasks:
        assert f'id="cpu-2core-standard-{name}"' in html
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
    assert readme.count("### ") == len(tasks) and "![" in readme


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
    assert runner.invoke(main, ["score", *roots, *out]).exit_code == 0
    built = runner.invoke(main, ["leaderboard", "build", *roots, *out])
    assert built.exit_code == 0, built.output
    checked = runner.invoke(main, ["leaderboard", "check", *roots, *out])
    assert checked.exit_code == 0 and "up to date" in checked.output
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
    assert rebuild.exit_code == 2 and "run `ldbench score` first" in rebuild.output
    empty = runner.invoke(main, ["leaderboard", "check", "--root", str(tmp_path / "none"), *out])
    assert empty.exit_code == 0 and "nothing to check" in empty.output


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


def test_page_in_a_browser_has_tables_plots_and_no_console_errors(site, browser):
    browser.open(site / "leaderboard" / "index.html")
    tables = browser.evaluate("document.querySelectorAll('table').length")
    rows = browser.evaluate("document.querySelectorAll('tbody tr').length")
    images = browser.evaluate(
        "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert tables == 1 + len(score.registry.all_tasks()) and rows >= 4 * tables
    assert len(images) >= tables - 1 and all(done and width > 100 for _, done, width in images), images
    # Sorting and filtering run without errors and do what they say.
    first = browser.evaluate("""(() => {
        const th = document.querySelector('table.sortable th:nth-child(3)');
        th.click(); th.click();  // score, descending
        return document.querySelector('table.sortable tbody tr').dataset.entry; })()""")
    assert first == "alpha"
    hidden = browser.evaluate("""(() => {
        const box = document.querySelector('input.filter');
        box.value = 'gam'; box.dispatchEvent(new Event('input'));
        return Array.from(box.nextElementSibling.querySelectorAll('tbody tr')).filter(r => !r.hidden)
            .map(r => r.dataset.entry); })()""")
    assert hidden == ["gamma"]
    title = browser.evaluate("document.title")
    assert browser.errors() == [] and "leaderboard" in title
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
