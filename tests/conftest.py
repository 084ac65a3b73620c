"""Shared fixtures: throwaway entries written into a temp folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

# Before any test module imports torch: suite sets the profile's OpenMP wait policy, which torch
# reads only when it loads (suite/startup.py); a profile refuses a process that missed it.
import suite  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

SGD_CODE = """
import torch

def make_optimizer(params, hparams, task):
    return torch.optim.SGD(params, lr=hparams["lr"])
"""


def write_entry(folder: Path, *, name: str = "probe", code: str = SGD_CODE,
                hparams: str = "[hparams.default]\nlr = 0.01\n", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "entry.toml").write_text(
        f'name = "{name}"\nversion = 1\nauthors = ["Test"]\ndescription = "test entry"\n'
        f"{extra}\n{hparams}"
    )
    (folder / "entry.py").write_text(textwrap.dedent(code))
    return folder


@pytest.fixture
def make_entry(tmp_path):
    def make(name: str = "probe", **kwargs) -> Path:
        return write_entry(tmp_path / name, name=name, **kwargs)
    return make
