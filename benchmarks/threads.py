"""Intra-op threads per run: each task one by one and batched on 1 and on 2 threads, side by side.

    python benchmarks/threads.py                            # standard-tier sizes, 200 steps, 8 seeds
    python benchmarks/threads.py --tasks teacher-student --repeats 5

The measurement behind cpu-2core's `threads = 1`. For every task: the wall time of its seeds one
by one (`--seed-batch 1`) and batched (`--seed-batch auto`) with torch on one intra-op thread and
on two, the four alternating within each repeat so that load hits them alike; medians of
`--repeats`. Then a few single ops on one and two threads: a matmul small enough to be all
overhead shows what waking the second thread costs. Run it with the wait policy of the profile
under test (cpu-2core: passive, set by `import suite` before torch loads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find benchmarks/

import suite  # noqa: F401, I001  (before torch: the profile's OpenMP wait policy)

import torch
from tabulate import tabulate

from benchmarks.common import configured
from benchmarks.speed import batched_seconds, one_by_one_seconds, timed
from suite import profiles, registry
from suite.entry import load_entry
from suite.loop import Trainer, torch_threads

THREADS = (1, 2)


def on_threads(threads: int, fn, *args) -> float:
    """Wall time of fn(*args) with torch on `threads` intra-op threads (restored after)."""
    with torch_threads(threads):
        return fn(*args)


def task_row(name: str, entry, prof: profiles.Profile, args) -> list[str]:
    task = configured(name, args.tier, args.steps, args.evals)
    trainer = Trainer(task, entry, prof)
    seeds = list(range(args.seeds))
    warm = configured(name, args.tier, 5, 2)
    batched_seconds(warm, Trainer(warm, entry, prof), seeds[:2])  # load kernels once
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for how, fn in (("one by one", one_by_one_seconds), ("batched", batched_seconds)):
            for threads in THREADS:
                samples.setdefault((how, threads), []).append(on_threads(threads, fn, task, trainer, seeds))
    med = {key: statistics.median(v) for key, v in samples.items()}
    print(f"  {name}: " + ", ".join(f"{how} on {t}: {s:.2f} s" for (how, t), s in med.items()), flush=True)
    ratios = [f"{med[how, 2] / med[how, 1]:.2f}×" for how in ("one by one", "batched")]
    return [name, *(f"{med[how, t]:.2f}" for how in ("one by one", "batched") for t in THREADS), *ratios]


def op_rows(repeats: int = 2000) -> list[list[str]]:
    """Microseconds per call of a few ops on one and on two threads."""
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(8, 16, 16, generator=gen)
    m64 = torch.randn(64, 64, generator=gen)
    big = torch.randn(8, 256, 256, generator=gen)
    ops = {"bmm (8,16,16)": lambda: torch.bmm(small, small), "mm 64×64": lambda: m64 @ m64,
           "add (8,16,16)": lambda: small + small, "bmm (8,256,256)": lambda: torch.bmm(big, big)}
    rows = []
    for label, op in ops.items():
        n = repeats if "256" not in label else repeats // 20
        times = []
        for threads in THREADS:
            def loop(op=op, n=n) -> float:
                for _ in range(20):
                    op()
                return timed(lambda: [op() for _ in range(n)]) / n * 1e6
            times.append(on_threads(threads, loop))
        rows.append([label, *(f"{t:.1f}" for t in times), f"{times[1] / times[0]:.2f}×"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", default="baselines/adam")
    parser.add_argument("--tier", default="standard", choices=registry.TIERS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--evals", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="cpu-2core")
    parser.add_argument("--tasks", default="", help="comma-separated (default: every task run batched)")
    args = parser.parse_args()

    prof = profiles.load(args.profile)
    prof.apply()
    entry = load_entry(args.entry)
    names = [t for t in args.tasks.split(",") if t] or list(registry.all_tasks())
    print(f"profile {prof.name} (wait policy {prof.omp_wait_policy}), {profiles.cpu_model()}, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} at start")
    print(f"{args.tier} tier, {args.steps} steps, {args.evals} evaluations, {args.seeds} seeds, "
          f"entry {entry.name}, median of {args.repeats}\n")
    rows = [task_row(name, entry, prof, args) for name in names]
    print()
    print(tabulate(rows, headers=["task", "one by one, 1 thread (s)", "2 threads (s)",
                                  "batched, 1 thread (s)", "2 threads (s)", "one by one: 2 / 1",
                                  "batched: 2 / 1"], tablefmt="github"))
    print()
    print(tabulate(op_rows(), headers=["op", "1 thread (µs)", "2 threads (µs)", "2 / 1"], tablefmt="github"))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
