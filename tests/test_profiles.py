"""Hardware profiles: the OpenMP wait policy they pin is validated, set before torch loads,
refused when it cannot be honoured, and recorded in every run's fingerprint."""

from __future__ import annotations

import json
import os
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
"""


def write_profile(folder: Path, name: str, policy: str | None) -> Path:
    line = f'omp_wait_policy = "{policy}"\n' if policy is not None else ""
    (folder / f"{name}.toml").write_text(PROFILE + line)
    return folder


def test_every_profile_pins_a_valid_wait_policy():
    for name in profiles.available():
        assert profiles.load(name).omp_wait_policy in startup.POLICIES


@pytest.mark.parametrize("policy, message", [("spin", "omp_wait_policy must be"),
                                             (None, "malformed profile")])
def test_a_profile_without_a_valid_wait_policy_is_refused(tmp_path, monkeypatch, policy, message):
    monkeypatch.setattr(profiles, "HERE", write_profile(tmp_path, "odd", policy))
    with pytest.raises(profiles.ProfileError, match=message):
        profiles.load("odd")


def test_the_fingerprint_records_the_profiles_and_the_processs_wait_policy():
    prof = profiles.load("cpu-2core")
    found = profiles.fingerprint(prof, REPO)
    assert json.loads(found["profile"])["omp_wait_policy"] == prof.omp_wait_policy
    assert found["omp_wait_policy"] == prof.omp_wait_policy.upper()  # conftest imported suite first


def test_a_profile_refuses_a_process_whose_torch_started_with_another_policy(monkeypatch):
    prof = profiles.load("cpu-2core")
    other = next(p for p in startup.POLICIES if p != prof.omp_wait_policy).upper()
    monkeypatch.setattr(startup, "preloaded", other)  # as if torch had been imported before suite
    with pytest.raises(profiles.ProfileError) as err:
        prof.check()
    text = str(err.value)
    assert "\n" not in text and f"OMP_WAIT_POLICY={prof.omp_wait_policy.upper()}" in text
    assert f"started with OMP_WAIT_POLICY={other}" in text and "imported before suite" in text


def test_the_profile_is_named_by_the_environment_then_the_command_line_then_the_default(tmp_path):
    folder = write_profile(tmp_path, "spin", "active")
    argv = ["ldbench", "run", "e", "--profile", "spin"]
    assert startup.profile_name(argv, {}, folder) == "spin"
    assert startup.profile_name(["x", "--profile=spin"], {}, folder) == "spin"
    assert startup.profile_name(argv, {"LDBENCH_PROFILE": "other"}, folder) == "other"
    assert startup.profile_name(["pytest", "--profile", "tests/"], {}, folder) == startup.DEFAULT_PROFILE
    assert startup.profile_policy("spin", folder) == "active"
    assert startup.profile_policy("missing", folder) is None


STANDALONE = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("startup", sys.argv[1])
startup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(startup)
startup.choose(sys.argv[3:], folder=__import__("pathlib").Path(sys.argv[2]))
seen = os.environ.get("OMP_WAIT_POLICY", "")
assert "torch" not in sys.modules
import torch
print(seen, startup.torch_started_with())
"""


@pytest.mark.parametrize("env, expected", [({}, "ACTIVE"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE")])
def test_a_new_process_sets_its_profiles_policy_before_torch_loads(tmp_path, env, expected):
    """The profile's policy is in os.environ before torch is imported; one set by hand stays."""
    folder = write_profile(tmp_path, "spin", "active")
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LDBENCH_PROFILE")}
    out = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(REPO / "suite" / "startup.py"), str(folder),
         "--profile", "spin"], env={**environ, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [expected, expected]


def test_importing_suite_sets_the_named_profiles_policy_before_torch():
    code = "import os, sys, suite; print('torch' in sys.modules, os.environ['OMP_WAIT_POLICY'])"
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LDBENCH_PROFILE")}
    out = subprocess.run([sys.executable, "-c", code, "--profile", "cpu-2core"], cwd=REPO,
                         env={**environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", profiles.load("cpu-2core").omp_wait_policy.upper()]


def test_ldbench_run_refuses_a_profile_it_cannot_honour_in_one_line(tmp_path):
    wanted = profiles.load("cpu-2core").omp_wait_policy.upper()
    other = next(p for p in startup.POLICIES if p.upper() != wanted).upper()
    out = subprocess.run(
        [sys.executable, "-m", "suite", "run", "baselines/sgd", "--tasks", "deep-linear-modes",
         "--profile", "cpu-2core", "--out", str(tmp_path / "out"), "--quiet"], cwd=REPO,
        env={**os.environ, "OMP_WAIT_POLICY": other, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True)
    assert out.returncode == 2 and not (tmp_path / "out").exists()
    assert out.stderr.count("\n") == 1 and f"pins OMP_WAIT_POLICY={wanted}" in out.stderr
