"""Prints how long `ldbench score` and `ldbench leaderboard build` take on 1,000 synthetic entries."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--keep", type=Path, default=None, help="build here instead of a temp folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        start = time.perf_counter()
        make_entries(root / "submissions", args.entries, seed=0)
        print(f"generated {args.entries} synthetic entries in {time.perf_counter() - start:.1f} s "
              "(not part of the build)")
        out = root / "leaderboard"

        start = time.perf_counter()
        inputs = score.collect([root / "submissions"])
        table = score.score(inputs)
        score.write_scores(table, out / score.SCORES_FILE, inputs.digest)
        scored = time.perf_counter() - start
        print(f"ldbench score:             {scored:6.1f} s  ({len(table):,} rows)")

        start = time.perf_counter()
        scores, _ = score.read_scores(out / score.SCORES_FILE)
        inputs = score.collect([root / "submissions"])
        files = build.build(inputs, scores, out)
        built = time.perf_counter() - start
        size = sum(f.stat().st_size for f in files) / 2**20
        print(f"ldbench leaderboard build: {built:6.1f} s  ({len(files):,} files, {size:.1f} MiB)")
        print(f"total for {args.entries} entries: {scored + built:.1f} s")


if __name__ == "__main__":
    main()
