"""How far batched and one-by-one runs of one entry apart: each metric's largest difference.

    python benchmarks/execution_spread.py baselines/adam --tier smoke --seeds 3

Runs every task of the suite twice into two temporary folders, `--seed-batch auto` and
`--seed-batch 1`, and prints per task and metric the largest absolute difference over seeds,
relative to the metric's typical size, next to the metric's declared resolution (if the task
declares one). Differences come from float32 rounding in other kernels (a vmapped matmul is not
the same kernel as S plain ones), amplified by the training dynamics and by the metric.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

import numpy as np
import pandas as pd
from tabulate import tabulate

from suite import registry, runner


def spread(batched: pd.DataFrame, alone: pd.DataFrame) -> pd.DataFrame:
    """Per (task, metric): the largest |batched − one by one| over seeds, and the mean |value|."""
    keys = ["task", "seed", "metric"]
    both = batched.merge(alone, on=keys, suffixes=("_batched", "_alone"))
    both["diff"] = (both["value_batched"] - both["value_alone"]).abs()
    same_inf = np.isinf(both["value_batched"]) & (both["value_batched"] == both["value_alone"])
    both.loc[same_inf | (both["value_batched"].isna() & both["value_alone"].isna()), "diff"] = 0.0
    return both.groupby(["task", "metric"], as_index=False).agg(
        max_diff=("diff", "max"), scale=("value_alone", lambda v: float(np.nanmean(np.abs(v[np.isfinite(v)])))
                                         if np.isfinite(v).any() else math.nan))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entry")
    parser.add_argument("--tier", default="smoke")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default="")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t] or None
    with tempfile.TemporaryDirectory() as tmp:
        runs = {mode: runner.run_suite(args.entry, tasks=tasks, seeds=args.seeds, tier=args.tier,
                                       out=Path(tmp) / mode, progress=False, seed_batch=mode)
                for mode in ("auto", "1")}
    table = spread(runs["auto"], runs["1"])
    rows = []
    for row in table.itertuples():
        spec = registry.make_task(row.task, args.tier).metrics().get(row.metric)
        resolution = getattr(spec, "resolution", None)
        relative = row.max_diff / row.scale if row.scale else math.nan
        rows.append([row.task, row.metric, f"{row.max_diff:.3g}", f"{relative:.2%}",
                     "" if resolution is None else f"{resolution:.3g}",
                     "" if resolution is None else ("yes" if row.max_diff <= resolution else "NO")])
    print(f"{args.entry}, {args.tier} tier, seeds 0..{args.seeds - 1}: batched vs one by one")
    print(tabulate(rows, headers=["task", "metric", "max |diff|", "relative", "resolution", "within"],
                   tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
