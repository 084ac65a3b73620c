"""Build third-party modules whose constructors draw from torch's global RNG from a generator."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

M = TypeVar("M", bound=torch.nn.Module)


def from_generator(factory: Callable[[], M], generator: torch.Generator) -> M:
    """`factory()` with torch's CPU global RNG seeded from `generator`, and restored after.

    nn.Linear, nn.Embedding, nn.MultiheadAttention and most third-party models initialise
    their weights from the global RNG in their constructors, which an architecture entry's
    make_model must not touch (its draws would depend on what ran before, and mix with the
    optimizer's). Wrapping the constructor in this call makes every draw a function of
    `generator` alone: the model is the same whatever ran before it, batched or not.
    Build on the CPU (the harness moves the model to the profile's device afterwards).
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return factory()
