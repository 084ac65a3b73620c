"""Seed batching speed-up per task and achieved FLOP/s, measured side by side on this machine.

    python benchmarks/speed.py                      # standard-tier models, 200 steps, 8 seeds
    python benchmarks/speed.py --suite              # also time the whole standard tier, 5 seeds
    python benchmarks/speed.py --trials 16          # a study's trials: one at a time vs batched

For every task in the registry: the wall time of training `--seeds` seeds one by one
(`Task.run` per seed, the `--seed-batch 1` path) and batched (`suite.batched.train_seeds`, the
`--seed-batch N` path), each the median of `--repeats` interleaved repeats, and their ratio; and
the ratio for `--seed-batch auto`, which runs the profile's `unbatched` tasks one by one.
Then where one more batched run of each task spends its time (drawing batches, evaluating, the
training steps, the rest) and the ceiling that leaves batching: the speed-up over one by one if
the training steps took only their matmul FLOPs at the dense matmul rate, the rest as measured.
Then the FLOP/s the largest task's training achieves (forward + backward matmul FLOPs counted by
torch's FlopCounterMode, times seeds and steps, over the wall time) against the FLOP/s of a
dense float32 matmul measured in the same process.
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

# Before torch: sets the OpenMP wait policy of the profile named by --profile (suite/startup.py).
import suite  # noqa: F401, I001

import torch
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import configured
from suite import batched, profiles, registry, runner, seeding
from suite.entry import Entry, load_entry
from suite.loop import Trainer
from suite.task import Task


def one_by_one_seconds(task: Task, trainer: Trainer, seeds: list[int]) -> float:
    """Each seed by itself, and a procedure's networks one after another (`--seed-batch 1`
    with batching refused: the execution every batch falls back to)."""
    alone = runner.alone(trainer)
    start = time.perf_counter()
    for seed in seeds:
        task.run(seed, alone)
    return time.perf_counter() - start


def batched_seconds(task: Task, trainer: Trainer, seeds: list[int]) -> float:
    start = time.perf_counter()
    if batched.batchable(task):
        batched.train_seeds(task, trainer, seeds)
    else:  # a procedure: every network of every seed side by side
        task.run_seeds(seeds, trainer)
    return time.perf_counter() - start


def medians(task: Task, trainer: Trainer, seeds: list[int], repeats: int) -> tuple[float, float]:
    """Median wall times (one by one, batched); repeats alternate so load hits both alike.

    A task with its own procedure and no run_seeds runs seed by seed either way: timed once.
    """
    singles, batches = [], []
    for _ in range(repeats):
        singles.append(one_by_one_seconds(task, trainer, seeds))
        if batched.seed_batchable(task):
            batches.append(batched_seconds(task, trainer, seeds))
    single = statistics.median(singles)
    return single, statistics.median(batches) if batches else single


def step_flops(task: Task, trainer: Trainer) -> int:
    """Matmul FLOPs of one seed's training step (forward and backward of Task.loss)."""
    data = trainer.to_device(task.make_data(0))
    model = trainer.to_device(task.make_model(0))
    batch = task.sample_batch(data, 1, seeding.generator(0, "batches", device=trainer.device))
    with FlopCounterMode(display=False) as counter:
        task.loss(model, batch).backward()
    return counter.get_total_flops()


def batched_breakdown(task: Task, trainer: Trainer, seeds: list[int]) -> dict[str, float]:
    """Where a batched run of the seeds spends its wall time: drawing batches, evaluating
    (observe), the training steps, and the rest (making data and models, tracing the step, a
    procedure's own evaluation such as mode-connectivity's barriers); with the batches drawn.

    Drawing and evaluating stay seed by seed in a batched run: each seed draws from its own
    generator (so that its numbers are the same batched or not), and each seed is evaluated by
    itself (a task's observe returns floats and may call numpy or scipy). `task` and `trainer`
    must be fresh: their methods are wrapped with timers.
    """
    spent = {"drawing": 0.0, "evaluating": 0.0, "steps": 0.0, "batches": 0}

    def timer(fn, key: str, count: str | None = None):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
                if count:
                    spent[count] += 1
        return timed

    run_lanes = trainer.run_lanes

    def timed_lanes(lanes, *, start, end, step_function):
        return run_lanes(lanes, start=start, end=end, step_function=timer(step_function, "steps"))

    task.sample_batch = timer(task.sample_batch, "drawing", "batches")  # these instances only
    task.observe = timer(task.observe, "evaluating")
    trainer.run_lanes = timed_lanes
    spent["total"] = batched_seconds(task, trainer, seeds)
    spent["rest"] = spent["total"] - spent["drawing"] - spent["evaluating"] - spent["steps"]
    return spent


def batching_ceiling(single: float, breakdown: dict[str, float], floor: float) -> float:
    """The most batching the training steps can speed `single` seconds of one-by-one runs up:
    the batched run as measured, its steps replaced by their matmul FLOPs at the dense rate."""
    return single / (breakdown["total"] - breakdown["steps"] + floor)


def matmul_flop_rate(n: int = 1024, repeats: int = 20, device: str = "cpu") -> float:
    """FLOP/s of a dense n×n float32 matmul on `device` (best of `repeats`: its dense peak)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device) for _ in range(2))
    wait = torch.cuda.synchronize if a.is_cuda else lambda: None  # CUDA kernels run asynchronously

    def product() -> None:
        a @ b
        wait()

    product()  # warm-up
    best = min(timed(product) for _ in range(repeats))
    return 2 * n**3 / best


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def trial_plans(task: Task, entry: Entry, n: int) -> list[runner.Plan]:
    """`n` trials of a study on one tuning seed: the entry's learning rate times 10^[-1, 1]."""
    lr = float(entry.hparams_for(task.name)["lr"])
    return [runner.Plan(task, 1_000_000, {"hparams": {"lr": lr * 10 ** (-1 + 2 * i / max(n - 1, 1))}})
            for i in range(n)]


def trial_medians(task: Task, entry: Entry, prof: profiles.Profile, plans: list[runner.Plan],
                  repeats: int) -> tuple[float, float, str]:
    """Median wall times of the trials one at a time and as one batch (`ldbench tune
    --trial-batch 1` and `auto`), interleaved, each with a fresh trainer as a study's groups
    have; and how the batch ran (its execution record's mode and optimizer)."""
    quiet = lambda _: None  # noqa: E731 - a refused batch shows in `how`
    singles, batches, how = [], [], ""
    for _ in range(repeats):
        singles.append(timed(lambda: [runner.execute_batch([p], Trainer(task, entry, prof), quiet)
                                      for p in plans]))
        start = time.perf_counter()
        outcomes = runner.execute_batch(plans, Trainer(task, entry, prof), quiet)
        batches.append(time.perf_counter() - start)
        execution = outcomes[0][0].execution
        how = f"{execution['mode']}, {execution.get('optimizer', execution.get('networks', ''))}"
    return statistics.median(singles), statistics.median(batches), how


def print_trials(names: list[str], entry: Entry, prof: profiles.Profile, args) -> None:
    print(f"\ntrial batching: {args.trials} trials of {entry.name} (lr × 10^[-1, 1]) on one "
          f"tuning seed, one at a time and as one batch:")
    rows = []
    for name in names:
        task = configured(name, args.tier, args.steps or None, args.evals or None)
        single, batch, how = trial_medians(task, entry, prof, trial_plans(task, entry, args.trials),
                                           args.repeats)
        rows.append([name, how, f"{single:.2f}", f"{batch:.2f}", f"{single / batch:.1f}×"])
        print(f"  {name}: {single:.2f} s one at a time, {batch:.2f} s batched", flush=True)
    print(tabulate(rows, headers=["task", "batch", "one at a time (s)", "batched (s)", "speed-up"],
                   tablefmt="github"))


# The tasks of the first suite, whose standard tier must take <= 3 minutes (issue 13); the
# whole suite (every task in the registry) must take <= 5 minutes.
FIRST_FIVE = ("deep-linear-modes", "teacher-student", "shared-representation", "modular-addition",
              "mode-connectivity")


def suite_seconds(entry: str, seeds: int, seed_batch: str, profile: str, tasks: list[str] | None = None,
                  workers: int | None = None) -> tuple[float, dict[str, float]]:
    """Wall time of `ldbench run ENTRY --tier standard --seeds N` into a throwaway folder (with
    the profile's workers, as the command runs it), and each task's share (the summed wall time
    of its runs, as recorded in its results)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        runs = runner.run_suite(entry, tasks=tasks, seeds=seeds, tier="standard", out=out,
                                progress=False, seed_batch=seed_batch, profile=profile, workers=workers)
        total = time.perf_counter() - start
    per_run = runs.drop_duplicates("run_id")
    return total, per_run.groupby("task")["wall_time_s"].sum().to_dict()


def print_suite(entry: Entry, seeds: int, prof: profiles.Profile) -> None:
    """The whole standard tier, then the first five tasks by themselves, each as `ldbench run`
    runs it on the profile (`workers` runs at a time), and once more in one process."""
    how = f"{prof.workers} workers" if prof.workers > 1 else "in one process"
    total, tasks = suite_seconds(str(entry.path), seeds, "auto", prof.name)
    rows = [[name, f"{sec:.1f}", "*" if name in FIRST_FIVE else ""] for name, sec in
            sorted(tasks.items(), key=lambda kv: -kv[1])]
    print(f"\nwhole standard tier, {seeds} seeds, {entry.name}, --seed-batch auto, {how} "
          "(seconds of run time per task; * first five):")
    print(tabulate(rows, headers=["task", "seconds", ""], tablefmt="github"))
    five, _ = suite_seconds(str(entry.path), seeds, "auto", prof.name, tasks=list(FIRST_FIVE))
    print(f"first five tasks: {five / 60:.2f} min wall (target <= 3); whole suite, {len(tasks)} "
          f"tasks: {total / 60:.2f} min wall (target <= 5); {how}")
    # Runs at a time, on average: about `workers` when they all kept busy. Seen 2026-11-27: some
    # runs of the suite took as long as their summed run time, as if the workers took turns.
    print(f"whole suite: {sum(tasks.values()):.1f} s of runs in {total:.1f} s wall, "
          f"{sum(tasks.values()) / total:.2f} runs at a time on average")
    if prof.workers > 1:
        alone, _ = suite_seconds(str(entry.path), seeds, "auto", prof.name, workers=0)
        print(f"whole suite in one process (--workers 0): {alone / 60:.2f} min wall "
              f"({alone / total:.2f}x the time with {how})")


def print_ceilings(timings: dict, flops: dict[str, int], peak: float, args, seeds: list[int]) -> None:
    """Per task, where a batched run's time goes and the speed-up batching its steps leaves at most."""
    rows = []
    for name, (_, trainer, single, _) in timings.items():
        task = configured(name, args.tier, args.steps or None, args.evals or None)  # fresh instances
        spent = batched_breakdown(task, Trainer(task, trainer.entry, trainer.profile), seeds)
        floor = flops[name] * spent["batches"] / peak  # every network's steps
        rows.append([name, f"{spent['total']:.2f}", f"{spent['drawing']:.2f}", f"{spent['evaluating']:.2f}",
                     f"{spent['steps']:.2f}", f"{spent['rest']:.2f}", f"{floor:.2f}",
                     f"{batching_ceiling(single, spent, floor):.1f}×"])
    print(f"\nwhere a batched run's time goes (one more batched run, timed by part): drawing each "
          f"seed's batches from its own generator and evaluating each seed stay seed by seed; the "
          f"ceiling is the speed-up over one by one if the training steps took only their matmul "
          f"FLOPs at the dense matmul rate ({peak / 1e9:.1f} GFLOP/s):")
    print(tabulate(rows, headers=["task", "batched (s)", "drawing", "evaluating", "steps",
                                  "rest", "steps' matmuls at the matmul rate", "ceiling"],
                   tablefmt="github"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", default="baselines/adam")
    parser.add_argument("--tier", default="standard", choices=registry.TIERS)
    parser.add_argument("--steps", type=int, default=200, help="steps per run (0: the tier's)")
    parser.add_argument("--evals", type=int, default=20, help="evaluations per run (0: the tier's)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="cpu-2core")
    parser.add_argument("--tasks", default="", help="comma-separated (default: all)")
    parser.add_argument("--suite", action="store_true",
                        help="also time the whole standard tier with 5 seeds, batched")
    parser.add_argument("--trials", type=int, default=0,
                        help="only time N trials of a study per task, one at a time and batched")
    args = parser.parse_args()

    prof = profiles.load(args.profile)
    prof.apply()
    entry = load_entry(args.entry)
    seeds = list(range(args.seeds))
    names = [t for t in args.tasks.split(",") if t] or list(registry.all_tasks())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"profile {prof.name} ({torch.get_num_threads()} threads), {profiles.cpu_model()}, "
          f"torch {torch.__version__}, load average {load:.2f} at start")
    print(f"{args.tier} tier, {args.steps or 'tier'} steps, {args.evals or 'tier'} evaluations, "
          f"{args.seeds} seeds, entry {entry.name}, median of {args.repeats}\n")

    if args.trials:
        print_trials(names, entry, prof, args)
        return
    headers = ["task", "--seed-batch auto", "one by one (s)", "batched (s)", "batched speed-up",
               "auto speed-up"]
    rows, timings = [], {}
    for name in names:
        task = configured(name, args.tier, args.steps or None, args.evals or None)
        trainer = Trainer(task, entry, prof)
        warm = configured(name, args.tier, 5, 2)
        medians(warm, Trainer(warm, entry, prof), seeds[:2], 1)  # load kernels once
        single, batch = medians(task, trainer, seeds, args.repeats)
        timings[name] = (task, trainer, single, batch)
        # What `ldbench run` does with these seeds: the profile's unbatched tasks run one by one.
        auto = single if name in prof.unbatched else batch
        how = ("one by one (profile)" if name in prof.unbatched else "batched"
               if batched.batchable(task) else "networks side by side"
               if batched.seed_batchable(task) else "own procedure: seed by seed")
        rows.append([name, how, f"{single:.2f}", f"{batch:.2f}", f"{single / batch:.1f}×",
                     f"{single / auto:.1f}×"])
        print(f"  {name}: {single:.2f} s one by one, {batch:.2f} s batched", flush=True)
    print()
    print(tabulate(rows, headers=headers, tablefmt="github"))

    peak = matmul_flop_rate(device=prof.device)
    flops = {n: step_flops(t[0], t[1]) for n, t in timings.items()}
    print_ceilings(timings, flops, peak, args, seeds)
    batchable = {n: t for n, t in timings.items() if batched.batchable(t[0])}
    if batchable:
        largest = max(batchable, key=flops.get)
        task, _, single, batch = timings[largest]
        total = flops[largest] * task.config["steps"] * len(seeds)
        print(f"\nlargest task: {largest}, {flops[largest] / 1e6:.1f} MFLOP per seed-step "
              f"(forward + backward matmuls)")
        print(f"dense 1024×1024 float32 matmul on {prof.device}: {peak / 1e9:.1f} GFLOP/s")
        for how, seconds in (("batched", batch), ("one by one", single)):
            rate = total / seconds
            auto = "; --seed-batch auto" if (how == "one by one") == (largest in prof.unbatched) else ""
            print(f"{how:>10}: {rate / 1e9:.2f} GFLOP/s = {rate / peak:.1%} of the matmul rate "
                  f"(wall time includes data, evaluation and optimizer){auto}")

    if args.suite:
        print_suite(entry, 5, prof)


if __name__ == "__main__":
    main()
