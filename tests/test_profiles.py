"""Hardware profiles: the OpenMP wait policy they pin is validated, set before torch loads,
refused when it cannot be honoured, and recorded in every run's fingerprint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from suite import profiles, startup

REPO = Path(__file__).resolve().parents[1]
PROFILE = """description = "test profile"
device = "cpu"
threads = 1
dtype = "float32"
deterministic = true
tf32 = false
workers = 1
"""


def write_profile(folder: Path, name: str, policy: str | None, count: object = None) -> Path:
    line = f'omp_wait_policy = "{policy}"\n' if policy is not None else ""
    line += f"omp_spin_count = {count}\n" if count is not None else ""
    (folder / f"{name}.toml").write_text(PROFILE + line)
    return folder


def wanted(prof: profiles.Profile) -> dict[str, str]:
    return startup.policy_environment(prof.omp_wait_policy, prof.omp_spin_count)


def test_every_profile_pins_a_valid_wait_policy():
    for name in profiles.available():
        prof = profiles.load(name)
        assert prof.omp_wait_policy in startup.POLICIES
        assert startup.valid_spin_count(prof.omp_wait_policy, prof.omp_spin_count)


@pytest.mark.parametrize("policy, count, message", [
    ("sleepy", None, "omp_wait_policy must be one of"), (None, None, "malformed profile"),
    ("spin", None, "omp_spin_count must be a positive integer"),
    ("spin", 0, "omp_spin_count must be"), ("spin", "true", "omp_spin_count must be"),
    ("spin", '"1000"', "omp_spin_count must be"), ("passive", 1000, "absent otherwise")])
def test_a_profile_without_a_valid_wait_policy_is_refused(tmp_path, monkeypatch, policy, count,
                                                          message):
    monkeypatch.setattr(profiles, "HERE", write_profile(tmp_path, "odd", policy, count))
    with pytest.raises(profiles.ProfileError, match=message):
        profiles.load("odd")
    assert startup.profile_environment("odd", tmp_path) is None


@pytest.mark.parametrize("workers", ["0", "-2", "1.5", '"2"', "true"])
def test_a_profile_without_a_positive_whole_number_of_workers_is_refused(tmp_path, monkeypatch,
                                                                          workers):
    write_profile(tmp_path, "odd", "passive")
    path = tmp_path / "odd.toml"
    path.write_text(path.read_text().replace("workers = 1", f"workers = {workers}"))
    monkeypatch.setattr(profiles, "HERE", tmp_path)
    with pytest.raises(profiles.ProfileError, match="workers must be a positive integer"):
        profiles.load("odd")


def test_each_policy_sets_one_variable_and_needs_the_other_unset():
    assert startup.policy_environment("passive") == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": ""}
    assert startup.policy_environment("active") == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": ""}
    assert startup.policy_environment("spin", 300) == {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "300"}
    assert startup.describe(startup.policy_environment("spin", 300)) == "GOMP_SPINCOUNT=300"
    assert startup.describe({"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": ""}) == "both unset"


def test_the_fingerprint_records_the_profiles_and_the_processs_wait_policy():
    prof = profiles.load("cpu-2core")
    found = profiles.fingerprint(prof, REPO)
    assert json.loads(found["profile"])["omp_wait_policy"] == prof.omp_wait_policy
    assert json.loads(found["profile"])["omp_spin_count"] == prof.omp_spin_count
    assert found["omp_wait_policy"] == startup.describe(wanted(prof))  # conftest imported suite first


@pytest.mark.parametrize("started", [{"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": ""},
                                     {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": ""},
                                     {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "77"},
                                     {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "77"}])
def test_a_profile_refuses_a_process_whose_torch_started_with_another_policy(monkeypatch, started):
    prof = profiles.load("cpu-2core")
    if started == wanted(prof):
        return
    monkeypatch.setattr(startup, "preloaded", started)  # as if torch had been imported before suite
    with pytest.raises(profiles.ProfileError) as err:
        prof.check()
    text = str(err.value)
    assert "\n" not in text and f"pins {startup.describe(wanted(prof))}" in text
    assert f"started with {startup.describe(started)}" in text and "imported before suite" in text


def test_the_profile_is_named_by_the_environment_then_the_command_line_then_the_default(tmp_path):
    folder = write_profile(tmp_path, "spin", "active")
    argv = ["ldbench", "run", "e", "--profile", "spin"]
    assert startup.profile_name(argv, {}, folder) == "spin"
    assert startup.profile_name(["x", "--profile=spin"], {}, folder) == "spin"
    assert startup.profile_name(argv, {"LDBENCH_PROFILE": "other"}, folder) == "other"
    assert startup.profile_name(["pytest", "--profile", "tests/"], {}, folder) == startup.DEFAULT_PROFILE
    assert startup.profile_environment("spin", folder) == startup.policy_environment("active")
    assert startup.profile_environment("missing", folder) is None


STANDALONE = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("startup", sys.argv[1])
startup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(startup)
startup.choose(sys.argv[3:], folder=__import__("pathlib").Path(sys.argv[2]))
seen = startup.describe({v: os.environ.get(v, "") for v in startup.VARIABLES})
assert "torch" not in sys.modules
import torch
print(seen, startup.describe(startup.torch_started_with()))
"""
OWN = {k: v for k, v in os.environ.items() if k not in (*startup.VARIABLES, "LDBENCH_PROFILE")}


@pytest.mark.parametrize("policy, count, env, expected", [
    ("active", None, {}, "OMP_WAIT_POLICY=ACTIVE"),
    ("spin", 500, {}, "GOMP_SPINCOUNT=500"),
    ("active", None, {"OMP_WAIT_POLICY": "PASSIVE"}, "OMP_WAIT_POLICY=PASSIVE"),
    ("spin", 500, {"OMP_WAIT_POLICY": "PASSIVE"}, "OMP_WAIT_POLICY=PASSIVE"),
    ("passive", None, {"GOMP_SPINCOUNT": "9"}, "GOMP_SPINCOUNT=9")])
def test_a_new_process_sets_its_profiles_policy_before_torch_loads(tmp_path, policy, count, env,
                                                                   expected):
    """The profile's variables are in os.environ before torch is imported; either variable set
    by hand leaves both alone (the profile then refuses to run, see above)."""
    folder = write_profile(tmp_path, "mine", policy, count)
    out = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(REPO / "suite" / "startup.py"), str(folder),
         "--profile", "mine"], env={**OWN, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{expected} {expected}"


def test_importing_suite_sets_the_named_profiles_policy_before_torch():
    code = ("import os, sys, suite; from suite import startup; print('torch' in sys.modules, "
            "startup.describe({v: os.environ.get(v, '') for v in startup.VARIABLES}))")
    out = subprocess.run([sys.executable, "-c", code, "--profile", "cpu-2core"], cwd=REPO,
                         env={**OWN, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", startup.describe(wanted(profiles.load("cpu-2core")))]


def test_applying_a_profile_pins_numpys_and_scipys_blas_threads_as_torchs():
    # OpenBLAS's own pool otherwise takes every core: two workers' pools fighting over two
    # cores made weight matching's small float64 matmuls 50x slower. A fresh process, as a
    # worker is, with numpy and scipy loaded before the profile is applied.
    code = ("import suite, numpy, scipy.linalg, threadpoolctl, torch; from suite import profiles; "
            "p = profiles.load('cpu-2core'); p.apply(); "
            "blas = [i for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']; "
            "print(p.threads, torch.get_num_threads(), len(blas), *sorted({i['num_threads'] for i in blas}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**OWN, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True)
    threads, torch_threads, libraries, *blas_threads = map(int, out.stdout.split())
    assert libraries >= 1 and blas_threads == [threads] == [torch_threads]


def test_ldbench_run_refuses_a_profile_it_cannot_honour_in_one_line(tmp_path):
    pinned = wanted(profiles.load("cpu-2core"))
    other = next(e for e in (startup.policy_environment("passive"), startup.policy_environment("active"))
                 if e != pinned)
    out = subprocess.run(
        [sys.executable, "-m", "suite", "run", "baselines/sgd", "--tasks", "deep-linear-modes",
         "--profile", "cpu-2core", "--out", str(tmp_path / "out"), "--quiet"], cwd=REPO,
        env={**OWN, **{k: v for k, v in other.items() if v}, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True)
    assert out.returncode == 2 and not (tmp_path / "out").exists()
    assert out.stderr.count("\n") == 1 and f"pins {startup.describe(pinned)}" in out.stderr


X86 = __import__("platform").machine().lower() in startup.X86


@pytest.mark.skipif(not X86, reason="ATEN_CPU_CAPABILITY pins x86 kernels only")
def test_a_new_process_runs_the_profiles_cpu_kernels_whatever_the_machine_has():
    """AVX-512 machines would otherwise run other kernels than AVX2 ones (other sums, other
    numbers); an ATEN_CPU_CAPABILITY set by hand is left alone, and the profile then refuses."""
    code = "import suite, torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in OWN.items() if k != startup.CAPABILITY_VARIABLE}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == profiles.load("cpu-2core").cpu_capability.upper() == "AVX2"
    code = ("import suite, torch; from suite import profiles\n"
            "try:\n    profiles.load('cpu-2core').check()\n"
            "except profiles.ProfileError as err:\n    print(err)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**env, "PYTHONPATH": str(REPO), startup.CAPABILITY_VARIABLE: "default"})
    assert out.stdout.startswith("profile 'cpu-2core' pins ATen's AVX2 CPU kernels (the same numbers on "
                                 "every x86 machine), but torch runs DEFAULT: start a new process")


def test_the_cpu_kernels_are_pinned_on_x86_only_and_recorded(monkeypatch):
    monkeypatch.setattr(startup.platform, "machine", lambda: "x86_64")
    assert startup.capability_environment("cpu-2core") == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert startup.capability_environment("cuda-1gpu") == {}
    monkeypatch.setattr(startup.platform, "machine", lambda: "arm64")
    assert startup.capability_environment("cpu-2core") == {}
    profiles.load("cpu-2core").check_cpu_capability()  # another processor: its own kernels, no refusal
    found = profiles.fingerprint(profiles.load("cpu-2core"), REPO)
    assert found["cpu_capability"] == __import__("torch").backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("value, problem", [
    ('"modular-addition"', "must be a list of task names"), ("[1]", "must be a list of task names"),
    ('["modular-adition"]', "unknown task 'modular-adition'; did you mean 'modular-addition'"),
])
def test_a_profile_listing_unbatched_tasks_it_cannot_name_is_refused(tmp_path, monkeypatch, value,
                                                                     problem):
    write_profile(tmp_path, "odd", "passive")
    path = tmp_path / "odd.toml"
    path.write_text(path.read_text() + f"unbatched = {value}\n")
    monkeypatch.setattr(profiles, "HERE", tmp_path)
    with pytest.raises(profiles.ProfileError, match=re.escape(problem)):
        profiles.load("odd")
