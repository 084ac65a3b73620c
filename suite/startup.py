"""OpenMP's wait policy, chosen from the hardware profile before torch loads (no torch import here).

How torch's idle OpenMP threads wait for work is read once, when its OpenMP runtime (libgomp)
loads with torch, from two variables: OMP_WAIT_POLICY (PASSIVE sleeps at once, ACTIVE spins
until work comes) and GOMP_SPINCOUNT (spin that many times, then sleep; it overrides the
policy). Setting them later does nothing. So `import suite`, which every `ldbench` command and
every `suite.*` module runs before torch, picks the profile cheaply (a TOML read) and sets them:

1. if either variable is already in the environment, both are left alone (a profile that
   disagrees refuses in `Profile.check`, rather than running with another policy than it pins);
2. else the policy of the profile named by LDBENCH_PROFILE;
3. else of the profile named by `--profile NAME` or `--profile=NAME` on the command line (any
   program's: `ldbench run`, `python benchmarks/speed.py`; a value that names no profile file
   is ignored, so other programs' `--profile` flags are harmless);
4. else of the default profile, cpu-2core.

If torch was imported before suite, nothing is set: the variables torch started with are
recorded, and a profile pinning other values refuses to run.
"""

from __future__ import annotations

import os
import platform
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

PROFILES = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "cpu-2core"
# passive: sleep at once; active: spin until work comes; spin: spin omp_spin_count times, then sleep.
POLICIES = ("passive", "active", "spin")
VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
PROFILE_VARIABLE = "LDBENCH_PROFILE"

# The variables torch loaded with (upper case, "" = unset), when torch was imported before
# suite; None when suite set them first (then the environment says it).
preloaded: dict[str, str] | None = None


def profile_name(argv: Sequence[str], environ: Mapping[str, str], folder: Path | None = None) -> str:
    """The profile this process runs: LDBENCH_PROFILE, else `--profile NAME` in argv, else the default."""
    folder = folder or PROFILES
    if environ.get(PROFILE_VARIABLE):
        return environ[PROFILE_VARIABLE]
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--profile=") else (
            argv[i + 1] if arg == "--profile" and i + 1 < len(argv) else None)
        if value and (folder / f"{value}.toml").is_file():
            return value
    return DEFAULT_PROFILE


def valid_spin_count(policy: object, count: object) -> bool:
    """A spin count belongs to the spin policy alone, and is a positive integer there."""
    if policy != "spin":
        return count is None
    return isinstance(count, int) and not isinstance(count, bool) and count > 0


def policy_environment(policy: str, spin_count: int | None = None) -> dict[str, str]:
    """The value of each OpenMP variable under `policy` ("" = must be unset)."""
    if policy == "spin":
        return {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": str(spin_count)}
    return {"OMP_WAIT_POLICY": policy.upper(), "GOMP_SPINCOUNT": ""}


def profile_environment(name: str, folder: Path | None = None) -> dict[str, str] | None:
    """The OpenMP variables of profile `name`, or None if it has no valid policy (load() says why)."""
    folder = folder or PROFILES
    try:
        raw = tomllib.loads((folder / f"{name}.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    policy, count = raw.get("omp_wait_policy"), raw.get("omp_spin_count")
    if policy not in POLICIES or not valid_spin_count(policy, count):
        return None
    return policy_environment(policy, count)


def choose(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None,
           folder: Path | None = None) -> None:
    """Set the OpenMP variables of this process's profile before torch loads (see the module
    docstring), and the CPU kernels it pins (`capability_environment`)."""
    global preloaded
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules:
        preloaded = read_variables(environ)
        return
    name = profile_name(sys.argv if argv is None else argv, environ, folder)
    if CAPABILITY_VARIABLE not in environ:
        environ.update(capability_environment(name, folder))
    if any(v in environ for v in VARIABLES):
        return
    wanted = profile_environment(name, folder)
    environ.update({k: v for k, v in (wanted or {}).items() if v})


# ATen picks its CPU kernels (AVX2, AVX-512...) from the machine when torch loads, unless this
# variable names them. Kernels of another width sum in another order: a transformer's stage
# times moved by up to 4% between an AVX-512 and an AVX2 machine on the same profile.
CAPABILITY_VARIABLE = "ATEN_CPU_CAPABILITY"
X86 = ("x86_64", "amd64", "i686", "i386")


def capability_environment(name: str, folder: Path | None = None) -> dict[str, str]:
    """{ATEN_CPU_CAPABILITY: the profile's cpu_capability} on an x86 machine, else {} (other
    processors run their own kernels; Profile.check says which ran)."""
    folder = folder or PROFILES
    try:
        raw = tomllib.loads((folder / f"{name}.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    pinned = raw.get("cpu_capability")
    if not isinstance(pinned, str) or platform.machine().lower() not in X86:
        return {}
    return {CAPABILITY_VARIABLE: pinned}


def torch_started_with() -> dict[str, str]:
    """The OpenMP variables as torch's OpenMP read them, upper case ("" = unset), as far as this
    process can tell."""
    return dict(preloaded) if preloaded is not None else read_variables(os.environ)


def read_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """Each OpenMP variable in `environ`, upper case ("" = unset)."""
    return {v: environ.get(v, "").strip().upper() for v in VARIABLES}


def describe(variables: Mapping[str, str]) -> str:
    """`OMP_WAIT_POLICY=PASSIVE`, `GOMP_SPINCOUNT=10000`, ...: the variables that are set, or "both unset"."""
    return " ".join(f"{k}={v}" for k, v in variables.items() if v) or "both unset"
