"""Dask execution: groups of runs on a dask.distributed cluster, their rows written by the client.

One writer: workers return each group's (runs, curves) rows and the client appends them through
suite.results as they arrive. The results store of this version rewrites a folder's tables on
every append, so concurrent appends from several processes could lose runs; with one writer
nothing is lost, and a worker killed mid-run loses only rows that were never returned (Dask
reruns its group on another worker). A killed client resumes like `ldbench run`: the groups it
appended are done, the others run again.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
import pandas as pd
from distributed.diagnostics.plugin import WorkerPlugin

from suite import profiles, results, runner, seeding
from suite.entry import Entry, EntryError
from suite.loop import Trajectory


class ClusterError(click.ClickException):
    """A cluster that cannot be reached: one line, exit 1 (click prints it)."""


@dataclass(frozen=True)
class Job:
    """One group of runs (seeds of one task, see runner.group_plans) of one entry."""

    entry: Entry
    group: list[tuple[runner.Plan, str]]

    @property
    def digest(self) -> str:
        return self.entry.hash


@functools.lru_cache(maxsize=8)
def worker_fingerprint(profile: str, entry_path: Path) -> dict[str, str]:
    """This worker's machine, recorded in its rows (computed once per worker process)."""
    return profiles.fingerprint(profiles.load(profile), entry_path)


def work(job: Job, *, digest: str, tier: str, profile: str,
         time_limit: float | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run one job on a worker: apply the profile here (threads, dtype, determinism), refusing
    the work if this machine cannot honour it, then return the group's rows."""
    prof = profiles.load(profile)
    try:
        prof.apply()
    except profiles.ProfileError as err:
        raise profiles.ProfileError(f"worker {socket.gethostname()} refuses the work: {err}") from None
    if job.entry.hash != digest:  # the worker must run exactly the files the run ids name
        raise EntryError(f"{job.entry.path}: worker {socket.gethostname()} sees other entry files "
                         "than the client; workers need the same files (a shared filesystem)")
    fingerprint = worker_fingerprint(profile, job.entry.path)
    with seeding.own_host_rngs():  # the worker's other threads draw from `random` and numpy's RNG
        return runner.run_group(job.group, job.entry, prof, tier=tier, profile=profile,
                                fingerprint=fingerprint, time_limit=time_limit)


class Imports(WorkerPlugin):
    """A Dask worker plugin: the worker imports every task module (and so torch and scipy) as it
    joins, before any job reaches it.

    A worker unpickles the next job (which imports its task's module) on its event-loop thread
    while its one executor thread runs the current job. Two threads importing scipy at once
    tripped Python's import-deadlock detection ("cannot import name 'PytestTester' from
    partially initialized module"): the worker lost its connection to the scheduler, and the
    other worker ran every remaining job, one after another (2 of 4 smoke suites on 2 cores).
    """

    name = "ldbench-imports"

    def setup(self, worker) -> None:
        from suite import registry

        registry.all_tasks()


class IgnoreInterrupt(WorkerPlugin):
    """A worker of a local cluster ignores Ctrl-C: the terminal sends SIGINT to every process of
    the command, and each worker printed two tracebacks (KeyboardInterrupt, CancelledError)
    above the client's one line; the client stops the cluster. Workers of --scheduler clusters
    keep theirs (their own terminal stops them)."""

    name = "ldbench-ignore-interrupt"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():  # signals are set there only
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def connect(workers: int, scheduler: str | None) -> Iterator:
    """A client of the cluster at `scheduler`, or of a new LocalCluster of `workers` processes.

    One thread per worker: a run's own threads come from the profile (torch.set_num_threads).
    The dashboard takes a free port (":0") so that several clusters never fight over 8787.
    """
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as err:
            raise ClusterError(f"--scheduler {scheduler}: cannot connect ({err}); start a scheduler "
                               "there (`dask scheduler`) or run a local cluster with --workers N") from None
        with client:
            client.register_plugin(Imports())
            yield client
        return
    # silence_logs: a run's failure reaches the client, which says it in one line; the workers'
    # own log of it (a traceback through ldbench) and the nannies' shutdown warnings are noise.
    with dask.config.set({SPAWN_ENVIRON: spawn_environ()}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as client:
        client.register_plugin(Imports())  # before any job: see Imports
        client.register_plugin(IgnoreInterrupt())
        yield client


SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"


def spawn_environ() -> dict:
    """The variables Dask's nanny sets before a worker starts, without MALLOC_TRIM_THRESHOLD_.

    Dask sets it to 64 KiB so that idle workers give memory back. glibc then returns every freed
    block above that size to the system (and stops adapting its mmap threshold), so each step's
    multi-MB temporaries are mapped and faulted in again: modular-addition's batched steps ran
    2.1-2.4x slower in a worker than in-process (7.2M against 1.2M page faults, 300 steps).
    The others (OMP_NUM_THREADS=1 ...) are harmless: the profile sets torch's threads.
    """
    import dask
    import distributed  # noqa: F401 - loads Dask's distributed defaults into dask.config

    return {k: v for k, v in dask.config.get(SPAWN_ENVIRON, {}).items() if k != "MALLOC_TRIM_THRESHOLD_"}


# How a run whose worker died on every try begins its error (verify leaves such runs out).
KILLED = "KilledWorker:"


def rows_of(future, job: Job, *, tier: str, profile: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The job's rows; a job that killed every worker it ran on (Dask gives up after
    `distributed.scheduler.allowed-failures` tries) is recorded as an error, and the suite goes on."""
    from dask.distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker as err:
        message = f"{KILLED} the run's worker process died on every try ({err})"
    prof = profiles.load(profile)
    frames = [runner.rows_for(plan, Trajectory(status="error"), plan.task.nan_metrics(), message,
                              rid=rid, entry=job.entry, entry_hash=job.digest, tier=tier, profile=profile,
                              fingerprint=profiles.fingerprint(prof, job.entry.path), wall=float("nan"))
              for plan, rid in job.group]
    return tuple(runner.concat_rows([f[k] for f in frames]) for k in (0, 1))


def dashboard(client) -> str:
    """The dashboard's address; Dask serves it only where bokeh is installed."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return "no dashboard (pip install 'bokeh>=3.1' to get Dask's)"
    return f"dashboard {client.dashboard_link}"


def run_jobs(jobs: list[Job], *, out: Path, tier: str, profile: str, workers: int = 0,
             scheduler: str | None = None, time_limit: float | None = None, progress: bool = True,
             client=None) -> None:
    """Run the jobs on `client`'s cluster (or a new session of `workers`/`scheduler`) and append
    each job's rows to `out` as it finishes. One progress bar counts runs over all workers."""
    if not jobs:
        return
    if client is not None:
        submit(client, jobs, out=out, tier=tier, profile=profile, time_limit=time_limit,
               progress=progress)
        return
    with session(workers, scheduler) as client:
        submit(client, jobs, out=out, tier=tier, profile=profile, time_limit=time_limit,
               progress=progress)


@contextmanager
def session(workers: int, scheduler: str | None) -> Iterator:
    """`connect`, printing the cluster's addresses once; None when neither option is given."""
    if not (workers or scheduler):
        yield None
        return
    with connect(workers, scheduler) as client:
        click.echo(f"dask: {len(client.scheduler_info()['workers'])} workers at "
                   f"{client.scheduler.address}; {dashboard(client)}", err=True)
        yield client


def submit(client, jobs: list[Job], *, out: Path, tier: str, profile: str, time_limit: float | None,
           progress: bool) -> None:
    """Submit every job, then append each job's rows as it finishes (the client is the one writer)."""
    from dask.distributed import as_completed

    futures = {}
    for job in jobs:
        # pure=False: a group is never deduplicated by Dask, and its key names its first run
        future = client.submit(work, job, digest=job.digest, tier=tier, profile=profile,
                               time_limit=time_limit, pure=False,
                               key=f"ldbench-run-{job.group[0][1]}-{len(futures)}")
        futures[future] = job
    total = sum(len(job.group) for job in jobs)
    with runner.progress_bar(total=total, unit="run", disable=not progress) as bar:
        for future in as_completed(futures):
            runs, curves = rows_of(future, futures[future], tier=tier, profile=profile)
            results.append_run(out, runs, curves)
            bar.update(len(futures[future].group))
