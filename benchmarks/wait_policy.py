"""OpenMP wait policies side by side: runs of an entry, quiet and under contention.

    python benchmarks/wait_policy.py          # baselines/adam, 3 tasks, 2 seeds, median of 3
    python benchmarks/wait_policy.py --policies passive,spin:3000,spin:10000,active

A policy is `passive`, `active` or `spin:N` (spin N times, then sleep: a profile's
`omp_wait_policy = "spin"` with `omp_spin_count = N`). Each run is a fresh process (the
variables only take effect before torch loads) that runs `runner.run_suite` with the profile's
policy replaced by the one measured; the time is that of run_suite (Python and torch start-up
excluded). Within a repeat the policies alternate, so that load from elsewhere hits them alike.
"contended" adds one busy process per core, a single-threaded numpy matmul loop, for as long as
its runs last. Prints each median, its ratio to the first policy's and the load average around
each condition.
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
sys.path.insert(0, str(REPO))
from suite import startup  # noqa: E402 - torch-free: the module that sets the variables

# The run, in a fresh process started with the policy's variables already set.
DRIVER = """
import dataclasses, sys, time
import suite
from suite import profiles, runner
policy, count, entry, tasks, seeds, tier, out = sys.argv[1:8]
load = profiles.load
profiles.load = lambda name: dataclasses.replace(load(name), omp_wait_policy=policy,
                                                 omp_spin_count=int(count) or None)
start = time.perf_counter()
runner.run_suite(entry, tasks=tasks.split(","), seeds=int(seeds), tier=tier, out=out, progress=False)
print(time.perf_counter() - start)
"""
# A matmul loop that ends with its parent (a killed benchmark leaves no busy process behind).
BUSY = ("import os, numpy as np\na, parent = np.random.rand(256, 256), os.getppid()\n"
        "while os.getppid() == parent:\n    a @ a\n")
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def parsed(spec: str) -> tuple[str, int]:
    """`passive`, `active` or `spin:N` -> (policy, spin count; 0 for none)."""
    policy, _, count = spec.partition(":")
    if policy not in startup.POLICIES or (policy == "spin") != count.isdigit():
        raise SystemExit(f"--policies: {spec!r} is not passive, active or spin:N")
    return policy, int(count or 0)


def run_seconds(spec: str, args: argparse.Namespace) -> float:
    """run_suite's wall time in a fresh process whose torch starts with the policy `spec`."""
    policy, count = parsed(spec)
    env = {k: v for k, v in os.environ.items() if k not in (*startup.VARIABLES, "LDBENCH_PROFILE")}
    env.update({k: v for k, v in startup.policy_environment(policy, count).items() if v})
    env["PYTHONPATH"] = str(REPO)
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", DRIVER, policy, str(count), args.entry,
                               args.tasks, str(args.seeds), args.tier, out], cwd=REPO, env=env,
                              capture_output=True, text=True, check=True, timeout=args.timeout)
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
    policies = args.policies
    times: dict[str, list[float]] = {p: [] for p in policies}
    with busy(extra):
        for i in range(args.repeats):
            for policy in policies[::-1] if i % 2 else policies:
                times[policy].append(run_seconds(policy, args))
                print(f"    {policy}: {times[policy][-1]:.2f} s", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", default="baselines/adam")
    parser.add_argument("--tasks", default="deep-linear-modes,shared-representation,modular-addition")
    parser.add_argument("--tier", default="smoke")
    parser.add_argument("--policies", default="passive,spin:10000,active",
                        help="comma-separated: passive, active, spin:N (ratios are to the first)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--conditions", default="quiet,contended", help="quiet, contended or both")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    policies = args.policies = args.policies.split(",")
    for spec in policies:
        parsed(spec)  # refuse a malformed policy before any run
    print(f"{args.entry}, {args.tier} tier, tasks {args.tasks}, {args.seeds} seeds, "
          f"median of {args.repeats}")
    rows = []
    conditions = {"quiet": ("quiet", 0), "contended": (f"contended (+{cores} busy)", cores)}
    for condition, extra in (conditions[c] for c in args.conditions.split(",")):
        before = os.getloadavg()[0]
        print(f"  {condition}, load average {before:.2f}", flush=True)
        times = measure(args, extra)
        med = [statistics.median(times[p]) for p in policies]
        cells = [f"{m:.2f} ({m / med[0]:.2f}×)" for m in med]
        rows.append(f"| {condition} | {' | '.join(cells)} | {before:.2f} → {os.getloadavg()[0]:.2f} |")
    print(f"\nseconds (ratio to {policies[0]}):\n")
    print(f"| condition | {' | '.join(policies)} | load average |")
    print("|---|" + "---|" * len(policies) + "---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
