"""Would torch.compile, with inductor's persistent cache, make the standard tier faster? Measured.

    python benchmarks/compile_cache.py                     # every batchable task, 5 seeds
    python benchmarks/compile_cache.py --tasks modular-addition --seeds 8

For each task whose seeds are batched (`suite.batched`), on the standard tier's model and data
sizes, in fresh processes (so that nothing is cached in memory):
- the step of today's engine: the vmapped gradient traced into a graph of aten ops (make_fx),
  milliseconds per step, median over `--steps` steps;
- `torch.compile` of the same vmapped gradient from a cold start (an empty inductor cache
  directory): compile seconds and milliseconds per step;
- the same in a new process with that cache warm (inductor's FX graph cache on disk).
Then, per task and for the tier: the compiled run's estimated wall time, compile + steps x
compiled step, against today's, steps x traced step (the optimizer step, evaluation and
sampling are the same either way and left out), from a cold and from a warm cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find benchmarks/

# Before torch: sets the OpenMP wait policy of the profile (suite/startup.py).
import suite  # noqa: F401, I001

import torch
from tabulate import tabulate

from suite import batched, profiles, registry, seeding
from suite.entry import load_entry
from suite.loop import Trainer


def gradient_inputs(task, trainer: Trainer, seeds: list[int]):
    """The stacked parameters and one stacked batch of `seeds`, and the seed loss, as a batch
    of `suite.batched` builds them."""
    datas = [trainer.to_device(task.make_data(s)) for s in seeds]
    models = [trainer.make_model(s, d) for s, d in zip(seeds, datas, strict=True)]
    streams = [seeding.generator(s, "batches", device=trainer.device) for s in seeds]
    batch, dims = batched.stack_batches([task.sample_batch(d, 1, g)
                                         for d, g in zip(datas, streams, strict=True)])
    seed_loss = batched.seed_loss_function(batched.loss_template(task, models[0]))
    return batched.stack_parameters(models), batch, dims, seed_loss


def step_ms(fn, args, steps: int) -> float:
    """Median milliseconds of `steps` calls (after one)."""
    fn(*args)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(name: str, mode: str, seeds: int, steps: int, entry: str) -> dict:
    """In this process: `mode` "traced" (today's engine) or "compiled" (torch.compile)."""
    prof = profiles.load("cpu-2core")
    prof.apply()
    task = registry.make_task(name, "standard")
    trainer = Trainer(task, load_entry(entry), prof)
    stacks, batch, dims, seed_loss = gradient_inputs(task, trainer, list(range(seeds)))
    eager = torch.func.vmap(torch.func.grad_and_value(seed_loss), in_dims=(0, dims))
    start = time.perf_counter()
    fn = batched.gradient_function(seed_loss, stacks, batch, dims) if mode == "traced" \
        else torch.compile(eager, dynamic=False)
    fn(stacks, batch)
    setup = time.perf_counter() - start
    return {"setup_s": setup, "step_ms": step_ms(fn, (stacks, batch), steps),
            "tier_steps": task.config["steps"]}


def in_fresh_process(name: str, mode: str, args, cache: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, __file__, "--child", name, mode, "--seeds", str(args.seeds),
                          "--steps", str(args.steps), "--entry", args.entry],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="", help="comma-separated (default: every batchable task)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--entry", default="baselines/adam")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.seeds, args.steps, args.entry)))
        return

    names = [t for t in args.tasks.split(",") if t] or [
        n for n in registry.all_tasks() if batched.batchable(registry.task_class(n))]
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.seeds} seeds, standard tier sizes, entry {args.entry}, "
          f"load average {load:.2f} at start\n")
    rows, totals = [], {"today": 0.0, "cold": 0.0, "warm": 0.0}
    for name in names:
        with tempfile.TemporaryDirectory() as cache:
            traced = in_fresh_process(name, "traced", args, cache)
            cold = in_fresh_process(name, "compiled", args, cache)
            warm = in_fresh_process(name, "compiled", args, cache)
        steps = traced["tier_steps"]
        today = traced["setup_s"] + steps * traced["step_ms"] / 1e3
        from_cold = cold["setup_s"] + steps * cold["step_ms"] / 1e3
        from_warm = warm["setup_s"] + steps * warm["step_ms"] / 1e3
        totals["today"] += today
        totals["cold"] += from_cold
        totals["warm"] += from_warm
        rows.append([name, steps, f"{traced['step_ms']:.2f}", f"{cold['step_ms']:.2f}",
                     f"{cold['setup_s']:.1f}", f"{warm['setup_s']:.1f}", f"{today:.1f}",
                     f"{from_cold:.1f}", f"{from_warm:.1f}"])
        print(f"  {name}: traced {traced['step_ms']:.2f} ms, compiled {cold['step_ms']:.2f} ms, "
              f"compile {cold['setup_s']:.1f} s cold / {warm['setup_s']:.1f} s warm", flush=True)
    rows.append(["all", "", "", "", "", "", f"{totals['today']:.1f}", f"{totals['cold']:.1f}",
                 f"{totals['warm']:.1f}"])
    print()
    print(tabulate(rows, tablefmt="github", headers=[
        "task", "steps", "traced ms/step", "compiled ms/step", "compile s (cold)",
        "compile s (warm)", "today s", "compiled s (cold)", "compiled s (warm)"]))


if __name__ == "__main__":
    main()
