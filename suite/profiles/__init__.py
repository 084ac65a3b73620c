"""Pinned hardware profiles: one TOML file each, applied before a run and fingerprinted into it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import scipy.linalg  # noqa: F401 - loads scipy's own BLAS, so that `apply` limits it too
import threadpoolctl
import torch

import suite
from suite import registry, startup
from suite.registry import did_you_mean

HERE = Path(__file__).parent
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CAPABILITIES = ("default", "avx2", "avx512")  # ATEN_CPU_CAPABILITY's values on x86


class ProfileError(RuntimeError):
    """A profile that does not exist, is malformed, or that this machine cannot honour."""


@dataclass(frozen=True)
class Profile:
    """A pinned hardware configuration, one `suite/profiles/NAME.toml` (every field required but
    omp_spin_count, cpu_capability and unbatched).

    description: one line, shown on the leaderboard. device: "cpu" or "cuda". threads: torch's
    intra-op threads, and the threads of numpy's and scipy's BLAS (host-side metrics: weight
    matching, k-means, pseudo-inverses). dtype: "float32" or "float64". deterministic: torch's deterministic
    algorithms. tf32: TF32 matmuls on CUDA. omp_wait_policy: how torch's idle OpenMP threads
    wait for work: "passive" sleeps at once (OMP_WAIT_POLICY=PASSIVE), "active" spins until
    work comes (ACTIVE: faster on cores nothing else uses, many times slower on shared ones),
    "spin" spins `omp_spin_count` times and then sleeps (GOMP_SPINCOUNT; required with "spin",
    refused otherwise). They are set before torch loads
    (`suite/startup.py`); a process whose torch started with other values refuses the profile
    (`check`). workers: how many runs the profile trains at a time (`ldbench run` without
    --workers): 1 in the ldbench process; N > 1 in a local Dask cluster of N worker processes,
    each with `threads` threads, when there are at least two groups of runs. The numbers do not
    depend on it (a worker computes exactly what the ldbench process would), only the wall time.
    cpu_capability (optional): the vector instructions ATen's CPU kernels use on x86 ("avx2"),
    pinned before torch loads (ATEN_CPU_CAPABILITY) so that machines with and without AVX-512
    compute the same numbers; `check` refuses a process whose torch runs others. Processors that
    are not x86 run their own kernels (recorded in the fingerprint). unbatched (optional): tasks
    whose seeds `--seed-batch auto` trains one by one on this profile, each seed a run of its
    own (spread over the workers), because batching them was measured slower there; an explicit
    `--seed-batch N` still batches them. The numbers are the same either way up to float32
    rounding (suite.batched), and each run records how it was executed.
    """

    name: str
    description: str
    device: str
    threads: int
    dtype: str
    deterministic: bool
    tf32: bool
    omp_wait_policy: str
    workers: int
    omp_spin_count: int | None = None
    cpu_capability: str | None = None
    unbatched: tuple[str, ...] = ()

    def workers_for(self, groups: int) -> int:
        """Worker processes for `groups` groups of runs: the profile's `workers` where there are
        at least two groups to spread over them, else 0 (in the ldbench process)."""
        return self.workers if self.workers > 1 and groups > 1 else 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def check(self) -> None:
        """Refuse, with the reason and the fix, a profile this machine cannot honour."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ProfileError(
                f"profile {self.name!r} needs a CUDA GPU, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}); run with --profile cpu-2core instead"
            )
        self.check_wait_policy()
        self.check_cpu_capability()
        cores = os.cpu_count() or 1
        if self.device == "cpu" and cores < self.threads:
            raise ProfileError(
                f"profile {self.name!r} pins {self.threads} threads but this machine has {cores} "
                "cores; its timings would not be comparable. Use a machine with more cores."
            )

    def check_wait_policy(self) -> None:
        """Refuse the profile if torch's OpenMP started with other wait variables than it pins."""
        started = startup.torch_started_with()
        wanted = startup.policy_environment(self.omp_wait_policy, self.omp_spin_count)
        if started == wanted:
            return
        before = " (torch was imported before suite)" if startup.preloaded is not None else ""
        unset = " and ".join(k for k, v in wanted.items() if not v)
        raise ProfileError(
            f"profile {self.name!r} pins {startup.describe(wanted)} ({unset} unset), but torch "
            f"started with {startup.describe(started)}{before} and reads them only when it loads: "
            f"start a new process with LDBENCH_PROFILE={self.name}, or with --profile {self.name} "
            f"on its command line, and neither {' nor '.join(startup.VARIABLES)} set"
        )

    def check_cpu_capability(self) -> None:
        """Refuse the profile on x86 if torch's CPU kernels are not those it pins."""
        if self.cpu_capability is None or platform.machine().lower() not in startup.X86:
            return
        running = torch.backends.cpu.get_cpu_capability()
        if running.lower() == self.cpu_capability.lower():
            return
        raise ProfileError(
            f"profile {self.name!r} pins ATen's {self.cpu_capability.upper()} CPU kernels (the same "
            f"numbers on every x86 machine), but torch runs {running}: start a new process with "
            f"LDBENCH_PROFILE={self.name}, or with --profile {self.name} on its command line, and "
            f"{startup.CAPABILITY_VARIABLE} unset (a CPU without {self.cpu_capability.upper()} cannot "
            "run this profile)")

    def apply(self) -> None:
        """Set torch's process-wide numerics for this profile (threads, determinism, TF32)."""
        self.check()
        torch.set_num_threads(self.threads)
        limit_host_blas(self.threads)
        if self.device == "cuda":
            # cuBLAS needs a fixed workspace to be deterministic (CUDA docs, "Reproducibility").
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(self.deterministic)


def limit_host_blas(threads: int) -> None:
    """numpy's and scipy's BLAS (OpenBLAS in their wheels) on `threads` threads, like torch.

    Their thread pools otherwise take every core of the machine whatever the profile pins: with
    two workers on two cores, four BLAS threads fought over them and a 128×128 float64 matmul of
    weight matching took 5-13 ms instead of 0.1 ms (measured 2026-11-27). threadpoolctl sets the
    libraries already loaded; this module imports scipy.linalg first so that scipy's is one.
    """
    threadpoolctl.threadpool_limits(limits=threads, user_api="blas")


def available() -> dict[str, Path]:
    return {p.stem: p for p in sorted(HERE.glob("*.toml"))}


def load(name: str) -> Profile:
    files = available()
    if name not in files:
        raise ProfileError(f"unknown profile {name!r}{did_you_mean(name, files)}")
    try:
        raw = tomllib.loads(files[name].read_text())
        profile = Profile(name=name, **raw)
    except (tomllib.TOMLDecodeError, TypeError) as err:
        raise ProfileError(f"{files[name]}: malformed profile ({err})") from None
    check_unbatched(files[name], profile.unbatched)
    profile = replace(profile, unbatched=tuple(profile.unbatched))
    if profile.dtype not in DTYPES or profile.device not in ("cpu", "cuda"):
        raise ProfileError(f"{files[name]}: dtype must be in {list(DTYPES)}, device cpu or cuda")
    if profile.omp_wait_policy not in startup.POLICIES:
        raise ProfileError(f"{files[name]}: omp_wait_policy must be one of "
                           f"{', '.join(map(repr, startup.POLICIES))}, not {profile.omp_wait_policy!r}")
    if type(profile.workers) is not int or profile.workers < 1:
        raise ProfileError(f"{files[name]}: workers must be a positive integer (1: runs train in the "
                           f"ldbench process), not {profile.workers!r}")
    if profile.cpu_capability not in (None, *CAPABILITIES):
        raise ProfileError(f"{files[name]}: cpu_capability must be one of {list(CAPABILITIES)} or "
                           f"absent, not {profile.cpu_capability!r}")
    if not startup.valid_spin_count(profile.omp_wait_policy, profile.omp_spin_count):
        raise ProfileError(f"{files[name]}: omp_spin_count must be a positive integer with "
                           f"omp_wait_policy = \"spin\" and absent otherwise, not "
                           f"{profile.omp_spin_count!r} with {profile.omp_wait_policy!r}")
    return profile


def check_unbatched(path: Path, names) -> None:
    """Refuse an `unbatched` field that is not a list of the registry's task names."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ProfileError(f"{path}: unbatched must be a list of task names, not {names!r}")
    tasks = registry.all_tasks()
    for name in names:
        if name not in tasks:
            raise ProfileError(f"{path}: unbatched names an unknown task {name!r}"
                               f"{did_you_mean(name, tasks)}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(path: Path) -> str:
    """HEAD of the git checkout holding `path` (+ "-dirty" if modified), or "" outside git."""
    try:
        run = dict(cwd=path, capture_output=True, text=True, timeout=10, check=True)
        head = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], **run).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def fingerprint(profile: Profile, entry_path: Path) -> dict[str, str]:
    """What ran where: recorded in every result row (as JSON) for provenance."""
    device = torch.cuda.get_device_name() if profile.device == "cuda" else cpu_model()
    return {
        "profile": json.dumps(asdict(profile), sort_keys=True),
        "omp_wait_policy": startup.describe(startup.torch_started_with()),  # what OpenMP read
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels ATen ran
        "cpu_count": str(os.cpu_count()),
        "device_name": device,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "suite_version": suite.__version__,
        "git_commit": git_commit(entry_path),
    }
