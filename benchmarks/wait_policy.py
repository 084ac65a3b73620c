"""OpenMP's two wait policies side by side: smoke-tier runs of an entry, quiet and under contention.

    python benchmarks/wait_policy.py          # baselines/adam, 2 tasks, 2 seeds, median of 3

Each run is a fresh process (OMP_WAIT_POLICY only takes effect before torch loads) that runs
`runner.run_suite` on the smoke tier with the profile's `omp_wait_policy` replaced by the policy
measured; the time is that of run_suite (Python and torch start-up excluded). Within a repeat
the policies alternate, so that load from elsewhere hits both alike. "contended" adds one busy
process per core, a single-threaded numpy matmul loop, for as long as its runs last. Prints each
median, the ratio active / passive and the load average around each condition.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("passive", "active")
# The run, in a fresh process started with OMP_WAIT_POLICY already set to argv[1].
DRIVER = """
import dataclasses, sys, time
import suite
from suite import profiles, runner
policy, entry, tasks, seeds, out = sys.argv[1:6]
load = profiles.load
profiles.load = lambda name: dataclasses.replace(load(name), omp_wait_policy=policy)
start = time.perf_counter()
runner.run_suite(entry, tasks=tasks.split(","), seeds=int(seeds), tier="smoke", out=out, progress=False)
print(time.perf_counter() - start)
"""
BUSY = "import numpy as np\na = np.random.rand(256, 256)\nwhile True:\n    a @ a\n"
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_seconds(policy: str, args: argparse.Namespace) -> float:
    """run_suite's wall time in a fresh process whose torch starts with `policy`."""
    env = {**os.environ, "OMP_WAIT_POLICY": policy.upper(), "PYTHONPATH": str(REPO)}
    env.pop("LDBENCH_PROFILE", None)
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", DRIVER, policy, args.entry, args.tasks,
                               str(args.seeds), out], cwd=REPO, env=env, capture_output=True,
                              text=True, check=True, timeout=args.timeout)
    return float(done.stdout.strip().splitlines()[-1])


@contextmanager
def busy(processes: int) -> Iterator[None]:
    """`processes` single-threaded matmul loops running for the duration (none for 0)."""
    env = {**os.environ, **SINGLE_THREAD}
    procs = [subprocess.Popen([sys.executable, "-c", BUSY], env=env) for _ in range(processes)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def measure(args: argparse.Namespace, extra: int) -> dict[str, list[float]]:
    """Seconds per policy, `args.repeats` each, alternating (which goes first alternates too)."""
    times: dict[str, list[float]] = {p: [] for p in POLICIES}
    with busy(extra):
        for i in range(args.repeats):
            for policy in POLICIES[::-1] if i % 2 else POLICIES:
                times[policy].append(run_seconds(policy, args))
                print(f"    {policy}: {times[policy][-1]:.2f} s", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", default="baselines/adam")
    parser.add_argument("--tasks", default="deep-linear-modes,teacher-student")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--conditions", default="quiet,contended", help="quiet, contended or both")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{args.entry}, smoke tier, tasks {args.tasks}, {args.seeds} seeds, median of {args.repeats}")
    rows = []
    conditions = {"quiet": ("quiet", 0), "contended": (f"contended (+{cores} busy)", cores)}
    for condition, extra in (conditions[c] for c in args.conditions.split(",")):
        before = os.getloadavg()[0]
        print(f"  {condition}, load average {before:.2f}", flush=True)
        times = measure(args, extra)
        med = {p: statistics.median(times[p]) for p in POLICIES}
        rows.append(f"| {condition} | {med['passive']:.2f} | {med['active']:.2f} | "
                    f"{med['active'] / med['passive']:.2f}× | {before:.2f} → {os.getloadavg()[0]:.2f} |")
    print("\n| condition | passive (s) | active (s) | active / passive | load average |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
