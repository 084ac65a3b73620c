"""Prints how long `ldbench score` and `ldbench leaderboard build` take on 1,000 synthetic entries.

    python benchmarks/leaderboard_build.py                       # generate, then score and build
    python benchmarks/leaderboard_build.py --keep /tmp/lb         # keep the entries and the site
    python benchmarks/leaderboard_build.py --submissions /tmp/lb/submissions --repeats 3

Each step is timed as its command runs it: `score` collects the results and writes the scores;
`leaderboard build` checks the scores' digest against the files, reads the inputs `score`
recorded next to them and writes the site. Wall and CPU seconds are printed (the CPU time of
this process and its children, which is less sensitive to other load on a shared machine),
each the median of --repeats, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find benchmarks/

import numpy as np

from suite import score
from suite.site import build
from suite.site.synthetic import synthetic_entry


def make_entries(root: Path, n: int, seed: int) -> None:
    """`n` entries with results for the suite, 5 seeds, of varied speed: one in 5 on the
    architecture track (every other one a recipe; some models lack methods that tasks or
    metrics need, which makes those not applicable), one in 25 incomplete (a task without
    runs), one in 20 with a task whose seeds partly failed."""
    rng = np.random.default_rng(seed)
    lacks = [(), ("product",), ("patterns", "logits_and_attention"), ("product", "features")]
    for i in range(n):
        track = "optimizer" if i % 5 else ("architecture", "recipe")[i // 5 % 2]
        synthetic_entry(root, f"entry-{i:04d}", rng=rng, speed=float(rng.uniform(0.5, 3.0)), track=track,
                        lacks=lacks[i // 5 % len(lacks)], skip=("markov-attention",) if i % 25 == 3 else (),
                        failed={"modular-addition": 2} if i % 20 == 7 else None)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def score_step(submissions: Path, out: Path) -> int:
    """`ldbench score`: collect, score, write; the number of rows."""
    inputs = score.collect([submissions])
    table = score.score(inputs)
    score.write_scores(table, out / score.SCORES_FILE, inputs.digest)
    score.write_inputs(inputs, out / score.INPUTS_FILE)
    return len(table)


def build_step(submissions: Path, out: Path) -> list[Path]:
    """`ldbench leaderboard build`: check the scores' digest against the files, take the inputs
    `score` recorded (or collect them again), write the site."""
    scores, inputs = score.scored_inputs([submissions], out)
    return build.build(inputs, scores, out)


def timed(fn, *args) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args)
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def measure(submissions: Path, out: Path, repeats: int) -> None:
    """Time both steps `repeats` times into `out` and print the medians."""
    samples = {"score": [], "build": []}
    for _ in range(repeats):
        rows, *score_times = timed(score_step, submissions, out)
        files, *build_times = timed(build_step, submissions, out)
        samples["score"].append(score_times)
        samples["build"].append(build_times)
    med = {k: [statistics.median(s[i] for s in v) for i in (0, 1)] for k, v in samples.items()}
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"ldbench score:             {med['score'][0]:6.1f} s wall, {med['score'][1]:6.1f} s CPU "
          f"({rows:,} rows)")
    print(f"ldbench leaderboard build: {med['build'][0]:6.1f} s wall, {med['build'][1]:6.1f} s CPU "
          f"({len(files):,} files, {size:.1f} MiB)")
    print(f"total: {med['score'][0] + med['build'][0]:.1f} s wall, "
          f"{med['score'][1] + med['build'][1]:.1f} s CPU (median of {repeats}); "
          f"load average {os.getloadavg()[0]:.2f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--keep", type=Path, default=None, help="build here instead of a temp folder")
    parser.add_argument("--submissions", type=Path, default=None,
                        help="entries made before (by --keep): skip generating them")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        submissions = args.submissions or root / "submissions"
        if args.submissions is None:
            start = time.perf_counter()
            make_entries(submissions, args.entries, seed=0)
            print(f"generated {args.entries} synthetic entries in {time.perf_counter() - start:.1f} s "
                  "(not part of the build)")
        print(f"load average {os.getloadavg()[0]:.2f} at the start")
        measure(submissions, root / "leaderboard", args.repeats)


if __name__ == "__main__":
    main()
