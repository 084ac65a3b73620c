"""OpenMP's wait policy, chosen from the hardware profile before torch loads (no torch import here).

OMP_WAIT_POLICY is read once, when torch's OpenMP runtime (libgomp) loads with torch; setting it
later does nothing. So `import suite`, which every `ldbench` command and every `suite.*` module
runs before torch, picks the profile cheaply (a TOML read) and sets the variable:

1. OMP_WAIT_POLICY already in the environment is left alone (a profile that disagrees refuses
   in `Profile.check`, rather than running with another policy than it pins);
2. else the policy of the profile named by LDBENCH_PROFILE;
3. else of the profile named by `--profile NAME` or `--profile=NAME` on the command line (any
   program's: `ldbench run`, `python benchmarks/speed.py`; a value that names no profile file
   is ignored, so other programs' `--profile` flags are harmless);
4. else of the default profile, cpu-2core.

If torch was imported before suite, nothing is set: the policy torch started with is recorded,
and a profile pinning another one refuses to run.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

PROFILES = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "cpu-2core"
POLICIES = ("passive", "active")
VARIABLE = "OMP_WAIT_POLICY"
PROFILE_VARIABLE = "LDBENCH_PROFILE"

# The value of OMP_WAIT_POLICY torch loaded with, when torch was imported before suite
# ("" = unset); None when suite set the variable first (then the environment says it).
preloaded: str | None = None


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


def profile_policy(name: str, folder: Path | None = None) -> str | None:
    """The `omp_wait_policy` of profile `name`, or None if it has no valid one (load() says why)."""
    folder = folder or PROFILES
    try:
        value = tomllib.loads((folder / f"{name}.toml").read_text(encoding="utf-8")).get("omp_wait_policy")
    except (OSError, ValueError):
        return None
    return value if value in POLICIES else None


def choose(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None,
           folder: Path | None = None) -> None:
    """Set OMP_WAIT_POLICY for this process's profile before torch loads (see the module docstring)."""
    global preloaded
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules:
        preloaded = environ.get(VARIABLE, "")
        return
    policy = profile_policy(profile_name(sys.argv if argv is None else argv, environ, folder), folder)
    if policy is not None:
        environ.setdefault(VARIABLE, policy.upper())


def torch_started_with() -> str:
    """OMP_WAIT_POLICY as torch's OpenMP read it, upper case ("" = unset: libgomp's default, a
    short spin then sleep), as far as this process can tell."""
    value = preloaded if preloaded is not None else os.environ.get(VARIABLE, "")
    return value.strip().upper()
