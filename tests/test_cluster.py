"""Dask execution on a LocalCluster of 2 workers: same numbers as in-process, worker faults, time limits."""

import os
import signal
import threading
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from suite import cluster, profiles, runner
from suite.profiles import ProfileError

FAST = ["steps=60", "evals=10"]
TASKS = ["deep-linear-modes", "shared-representation"]
# An optimizer slow enough (10 ms a step) that a worker can be killed in the middle of a run.
SLOW_SGD = """
import time
from types import SimpleNamespace
import torch

class SlowSGD(torch.optim.SGD):
    def step(self, closure=None):
        time.sleep(hparams_delay[0])
        return super().step(closure)

hparams_delay = [0.0]

def make_optimizer(params, hparams, task):
    hparams_delay[0] = hparams["delay"] if task.name in hparams["slow_tasks"] else 0.0
    return SlowSGD(params, lr=hparams["lr"])
"""


def slow_entry(make_entry, delay, slow_tasks=TASKS):
    return make_entry("slow", code=SLOW_SGD, hparams=(f"[hparams.default]\nlr = 0.01\ndelay = {delay}\n"
                                                      f"slow_tasks = {list(slow_tasks)!r}\n"))


@pytest.fixture(scope="module")
def scheduler():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc:
        yield lc.scheduler_address


def run(entry, out, **kwargs):
    kwargs.setdefault("tasks", TASKS)
    return runner.run_suite(entry, tier="smoke", sets=FAST, out=out, progress=False, **kwargs)


def sorted_table(path):
    frame = pd.read_parquet(path)
    keys = ["run_id", "metric"] + (["step"] if "step" in frame else [])
    return frame.sort_values(keys).reset_index(drop=True)


def test_distributed_numbers_are_bit_identical_to_in_process(make_entry, tmp_path, scheduler):
    entry = make_entry()
    run(entry, tmp_path / "local", seeds=2)
    run(entry, tmp_path / "dask", seeds=2, scheduler=scheduler)
    local = sorted_table(tmp_path / "local" / "runs.parquet")
    dask = sorted_table(tmp_path / "dask" / "runs.parquet")
    assert list(local.run_id) == list(dask.run_id) and len(local) > 0
    pd.testing.assert_series_equal(local.value, dask.value)  # NaN == NaN, bits otherwise
    pd.testing.assert_frame_equal(sorted_table(tmp_path / "local" / "curves.parquet"),
                                  sorted_table(tmp_path / "dask" / "curves.parquet"))


def test_a_batch_on_a_worker_is_not_refused_for_the_workers_own_random_draws(make_entry, tmp_path,
                                                                             scheduler):
    """A Dask worker's threads draw from Python's global `random` about once a second; a batch
    lasting longer than that was refused as "entry code draws from Python's global RNG" and ran
    one by one (other numbers than in-process) until workers kept `random` for the run's thread."""
    entry = slow_entry(make_entry, delay=0.02, slow_tasks=["deep-linear-modes"])  # ~2.5 s batch
    local = run(entry, tmp_path / "local", seeds=2, tasks=["deep-linear-modes"])
    dask = run(entry, tmp_path / "dask", seeds=2, tasks=["deep-linear-modes"], scheduler=scheduler)
    for table in (local, dask):
        assert all('"mode": "batched"' in e for e in table.drop_duplicates("run_id")["execution"])
    local, dask = (sorted_table(tmp_path / d / "runs.parquet") for d in ("local", "dask"))
    pd.testing.assert_series_equal(local.value, dask.value)


def test_only_the_owning_thread_draws_from_pythons_and_numpys_global_rngs():
    """On a worker, Dask's threads draw from Python's `random` (message compression) and from
    numpy's global RNG (sizing a job's returned rows); the entry's checks must see the entry's
    draws only, or a correct make_model is failed and batches are refused at random."""
    import random

    import numpy as np
    from dask.sizeof import sizeof
    from distributed.protocol import compression  # `from random import randint`, used on its thread

    from suite import seeding

    rows = pd.DataFrame({"error": pd.Series(["a", None] * 200, dtype=object)})  # sampled by sizeof

    def draw():
        for _ in range(100):
            random.random()
            compression.randint(0, 9)
            sizeof(rows)
            np.random.seed(11)  # a module function of numpy's, not a method of its instance
            np.random.rand()

    with seeding.own_host_rngs():
        random.seed(7)
        np.random.seed(7)
        before = seeding.host_rng_states()
        other = threading.Thread(target=draw)
        other.start()
        other.join()
        assert seeding.same_host_rng_states(before, seeding.host_rng_states())  # drew privately
        draw()
        now = seeding.host_rng_states()
        assert random.getstate() != before[0]
        assert not seeding.same_host_rng_states((before[0], now[1]), before)  # numpy's drew
    # Outside the block every thread draws from the global RNGs as usual (in-process runs after
    # a block in the same process seed numpy's and draw from it, reproducibly).
    np.random.seed(3)
    first = np.random.rand(3)
    np.random.seed(3)
    assert np.array_equal(np.random.rand(3), first)
    assert np.array_equal(first, np.random.RandomState(3).rand(3))


def test_verify_on_dask_workers_reproduces_the_runs_bit_for_bit(make_entry, scheduler):
    from suite import verify

    entry = make_entry()
    runner.run_suite(entry, tier="smoke", sets=FAST, tasks=TASKS, seeds=2, progress=False)
    local = verify.verify_submission(entry, k=3, tier="smoke", pick_seed=1)
    remote = verify.verify_submission(entry, k=3, tier="smoke", pick_seed=1, scheduler=scheduler)
    assert len(remote) == len(local) > 0
    assert all(c.matches(rtol=0, atol=0) for c in remote)
    assert [c.reproduced for c in remote] == [c.reproduced for c in local]


def test_run_past_the_time_limit_is_a_timeout_and_the_suite_goes_on(make_entry, tmp_path, scheduler):
    entry = slow_entry(make_entry, 0.05, slow_tasks=["deep-linear-modes"])  # 60 steps: 3 s
    runs = run(entry, tmp_path / "out", seeds=1, scheduler=scheduler, time_limit=1.0)
    status = runs.drop_duplicates("run_id").set_index("task")["status"]
    assert status["deep-linear-modes"] == "timeout" and status["shared-representation"] == "ok"
    row = runs[runs.task == "deep-linear-modes"].iloc[0]
    assert "time limit of 1 s" in row.error and runs[runs.task == "deep-linear-modes"].value.isna().all()


def test_killed_worker_loses_and_duplicates_no_run(make_entry, tmp_path, scheduler):
    from dask.distributed import Client

    entry = slow_entry(make_entry, 0.02)  # about 1.2 s per run
    killed = []

    def kill_a_busy_worker():
        with Client(scheduler) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed:
                busy = [w for w, keys in client.processing().items() if keys]
                if busy:
                    time.sleep(0.5)  # into the run
                    pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    runs = run(entry, tmp_path / "out", seeds=3, seed_batch=1, scheduler=scheduler)
    killer.join()
    assert killed, "no worker was killed: the test did not test anything"
    stored = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    per_run = stored.groupby("run_id").size()
    assert len(per_run) == 6 and (stored.status == "ok").all()
    assert set(per_run.index) == set(runs.run_id)
    assert not stored.duplicated(["run_id", "metric"]).any()


def test_worker_refuses_a_profile_its_machine_cannot_honour(make_entry):
    from suite.entry import load_entry

    entry = load_entry(make_entry())
    plans = runner.make_plans(["deep-linear-modes"], [0], "smoke", FAST)
    job = cluster.Job(entry, [(plans[0], "id")])
    if torch.cuda.is_available():
        pytest.skip("this machine honours the CUDA profile")
    with pytest.raises(ProfileError, match="refuses the work"):
        cluster.work(job, digest=entry.hash, tier="smoke", profile="cuda-1gpu", time_limit=None)


def test_worker_refuses_entry_files_other_than_the_clients(make_entry):
    """The client's Entry caches its hash; pickled to a worker it must not carry it, or a
    worker seeing edited files would run them under the client's run ids."""
    import pickle

    from suite.entry import EntryError, load_entry

    folder = make_entry()
    entry = load_entry(folder)
    digest = entry.hash  # computed (and cached) by the client
    plans = runner.make_plans(["deep-linear-modes"], [0], "smoke", FAST)
    job = pickle.loads(pickle.dumps(cluster.Job(entry, [(plans[0], "id")])))
    (folder / "entry.py").write_text((folder / "entry.py").read_text() + "\n# edited\n")
    with pytest.raises(EntryError, match="sees other entry files"):
        cluster.work(job, digest=digest, tier="smoke", profile="cpu-2core", time_limit=None)


def test_distributed_study_matches_in_process_and_resumes_without_redoing_trials(
        make_entry, tmp_path, scheduler):
    import json

    from suite import tune

    entry = make_entry(hparams="[hparams.default]\nlr = 0.01\n[search.default]\n"
                               "lr = { log_uniform = [1e-3, 1e-1] }\n")
    common = dict(budget=3, tasks=["deep-linear-modes"], eval_seeds=2, sets=FAST, progress=False)
    local = tune.tune(entry, out=tmp_path / "local", **common)
    dask = tune.tune(entry, out=tmp_path / "dask", scheduler=scheduler, **common)
    read = [json.loads((folder / tune.TUNED_FILE).read_text()) for folder in (local, dask)]
    assert read[0]["tuned"] == read[1]["tuned"]
    assert read[0]["provenance"]["tasks"] == read[1]["provenance"]["tasks"]
    before = pd.read_parquet(dask / tune.TRIALS / "runs.parquet")
    tune.tune(entry, out=tmp_path / "dask", scheduler=scheduler, **common)
    after = pd.read_parquet(dask / tune.TRIALS / "runs.parquet")
    pd.testing.assert_frame_equal(before, after)  # same rows, same created_at: nothing reran


def test_cli_run_on_a_new_local_cluster_prints_its_address_once(make_entry, tmp_path):
    from click.testing import CliRunner

    from suite.cli import main

    args = ["run", str(make_entry()), "--tasks", "deep-linear-modes", "--seeds", "2", "--quiet",
            "--set", "steps=60", "--set", "evals=10", "--workers", "2", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("dask: 2 workers at tcp://") == 1 and "final_loss" in result.stdout
    assert pd.read_parquet(tmp_path / "out" / "runs.parquet").run_id.nunique() == 2


def test_a_job_that_kills_every_worker_is_recorded_as_an_error(make_entry):
    from dask.distributed import KilledWorker

    from suite.entry import load_entry

    class Dead:
        def result(self):
            raise KilledWorker("ldbench-run-x", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)

    entry = load_entry(make_entry())
    plans = runner.make_plans(["deep-linear-modes"], [0, 1], "smoke", FAST)
    runs, curves = cluster.rows_of(Dead(), cluster.Job(entry, [(p, f"id{p.seed}") for p in plans]),
                                   tier="smoke", profile="cpu-2core")
    assert set(runs.run_id) == {"id0", "id1"} and (runs.status == "error").all() and curves.empty
    assert runs.value.isna().all() and runs.error.str.startswith("KilledWorker").all()


def test_unreachable_scheduler_is_one_line(make_entry):
    from click.testing import CliRunner

    from suite.cli import main

    result = CliRunner().invoke(main, ["run", str(make_entry()), "--tasks", "deep-linear-modes",
                                       "--scheduler", "tcp://127.0.0.1:9", "--quiet"])
    assert result.exit_code == 1 and "cannot connect" in result.output
    assert "Traceback" not in result.output


def test_local_workers_keep_glibcs_adaptive_malloc(monkeypatch):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which made every step's
    multi-MB temporaries be mapped and faulted in anew (modular-addition 2x slower); ldbench's
    LocalCluster leaves it unset and keeps Dask's other variables."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with cluster.connect(1, None) as client:
        names = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")
        seen = client.run(lambda: {k: os.environ.get(k) for k in names})
    assert list(seen.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}]


def test_every_worker_imports_the_task_modules_before_its_first_job():
    """A worker unpickles its next job (importing the task's module) while it runs another: two
    threads importing scipy at once broke a worker in 2 of 4 smoke suites, and the other ran
    every job. Workers of ldbench's own cluster and of one given by --scheduler (started
    without ldbench) have imported every task module before a job reaches them."""
    from dask.distributed import LocalCluster

    from suite import registry

    modules = sorted(cls.__module__ for cls in registry.all_tasks().values())
    imported = lambda: [m for m in modules if m in __import__("sys").modules]  # noqa: E731
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as bare:
        with cluster.connect(0, bare.scheduler_address) as client:
            assert list(client.run(imported).values()) == [modules]
    with cluster.connect(2, None) as client:
        assert list(client.run(imported).values()) == [modules, modules]


def test_local_workers_ignore_ctrl_c_and_given_ones_keep_it():
    """The terminal's Ctrl-C reaches every process of the command: each local worker printed two
    tracebacks above the client's one line. A --scheduler cluster's workers are stopped from
    their own terminal, so theirs is left alone."""
    import signal

    from dask.distributed import LocalCluster

    ignored = lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # noqa: E731
    with cluster.connect(2, None) as client:
        assert list(client.run(ignored).values()) == [True, True]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as bare:
        with cluster.connect(0, bare.scheduler_address) as client:
            assert list(client.run(ignored).values()) == [False]


def test_without_workers_a_run_takes_the_profiles_when_it_has_two_groups(make_entry, tmp_path,
                                                                         monkeypatch):
    """cpu-2core trains two runs at a time (`workers = 2`): two groups go to a local cluster of
    two workers, and the numbers are those of one process; one group stays in the process."""
    assert profiles.load("cpu-2core").workers == 2
    calls, real = [], cluster.run_jobs
    monkeypatch.setattr(cluster, "run_jobs", lambda jobs, **kw: calls.append((len(jobs), kw["workers"]))
                        or real(jobs, **kw))
    entry = make_entry()
    run(entry, tmp_path / "profile", seeds=2, workers=None)
    run(entry, tmp_path / "one", tasks=TASKS[:1], workers=None)
    assert calls == [(2, 2)]
    run(entry, tmp_path / "local", seeds=2, workers=0)
    pd.testing.assert_series_equal(sorted_table(tmp_path / "local" / "runs.parquet").value,
                                   sorted_table(tmp_path / "profile" / "runs.parquet").value)


def test_verify_on_a_worker_reruns_a_long_batch_together(make_entry, scheduler):
    """A worker's threads draw from `random` about once a second: a re-run batch lasting longer
    than that ran one by one on the worker (other float32 roundings) and verify reported an
    honest run's curves as mismatched, in about 1 of 5 runs of the test above."""
    from suite import verify

    entry = slow_entry(make_entry, delay=0.02, slow_tasks=["deep-linear-modes"])  # ~2.5 s batch
    runner.run_suite(entry, tier="smoke", sets=FAST, tasks=["deep-linear-modes"], seeds=2,
                     progress=False)
    checks = verify.verify_submission(entry, k=2, tier="smoke", pick_seed=0, scheduler=scheduler)
    assert checks and all(c.matches(rtol=0, atol=0) for c in checks)
