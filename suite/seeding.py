"""Explicit, purpose-separated random streams: no run ever touches torch's global RNG."""

from __future__ import annotations

import functools
import hashlib
import random
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose ("data", "init", "batches", ...) of one run seed.

    Hashing (not `seed + k`) keeps the streams of different purposes and seeds unrelated,
    and sha256 (not Python's `hash`) keeps them identical across processes and machines.
    """
    digest = hashlib.sha256(f"ldbench:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh torch.Generator for `purpose` of run seed `seed`, on `device`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, purpose))
    return gen


class EntryRNG:
    """The global torch RNG state that one seed's run lends to the entry's own code.

    Third-party optimizers draw from torch's global RNG (pytorch-optimizer's Apollo, Kron).
    Each seed's run owns a global-RNG state derived from its seed; `with rng:` swaps it in
    around a call into entry code and swaps it out after, so the draws a seed sees do not
    depend on which other seeds ran before or beside it (batched or one by one, here or on
    a verifier's machine). Swapping costs ~3 µs per call on the CPU.
    """

    def __init__(self, seed: int, device: str | torch.device = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.state = generator(seed, "entry-global-rng").get_state()
        if self.cuda:  # the CUDA generator of the current device, seeded the same way
            self.cuda_state = generator(seed, "entry-global-rng-cuda", device=device).get_state()
        self.saved: list = []

    def __enter__(self) -> EntryRNG:
        self.saved.append((torch.get_rng_state(), torch.cuda.get_rng_state() if self.cuda else None))
        torch.set_rng_state(self.state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state)
        return self

    def __exit__(self, *exc) -> None:
        self.state = torch.get_rng_state()
        cpu, cuda = self.saved.pop()
        torch.set_rng_state(cpu)
        if self.cuda:
            self.cuda_state = torch.cuda.get_rng_state()
            torch.cuda.set_rng_state(cuda)


def host_rng_states() -> tuple:
    """The states of Python's and numpy's global RNGs (~0.2 ms: read at evaluation steps only).

    numpy's whole state: its key array changes only when the 624 words of a block are used
    up, so a draw or two (one `np.random.uniform`) moves only the position within the block.
    """
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return random.getstate(), (keys.copy(), pos, has_gauss, gauss)


def same_host_rng_states(a: tuple, b: tuple) -> bool:
    """True when no draw from Python's or numpy's global RNG happened between two readings."""
    return a[0] == b[0] and np.array_equal(a[1][0], b[1][0]) and a[1][1:] == b[1][1:]


@contextmanager
def seeded_host_rngs(seed: int) -> Iterator[None]:
    """Seed Python's and numpy's global RNGs for one seed's run, restoring them afterwards.

    Entry code that draws from them is then reproducible run to run when it runs one by one
    (a batch refuses such entries: its seeds' draws would interleave).
    """
    saved = random.getstate(), np.random.get_state()
    random.seed(derive_seed(seed, "entry-python-rng"))
    np.random.seed(derive_seed(seed, "entry-numpy-rng") % 2**32)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


_OWNER = threading.local()  # .active: this thread owns Python's and numpy's global RNGs
_HELD = [False]  # some thread owns them: the others draw privately (else all draw as usual)


@contextmanager
def own_host_rngs() -> Iterator[None]:
    """Python's global `random` and numpy's global RNG for the calling thread alone while the
    block runs.

    A Dask worker's own threads draw from both while the next run trains: from Python's
    `random` about once a second (heartbeats, retries, peer choice, message compression), and
    from numpy's whenever Dask sizes a finished job's returned rows (`dask.sizeof` samples a
    pandas object column with `np.random.choice`). Seeds trained together check that entry
    code never draws from them (`host_rng_states`), as does make_model; on a worker those
    draws refused batches at random (other numbers than in-process) and failed correct entries
    ("make_model drew from a global RNG"), in about 1 of 3 smoke runs of a third-party model.
    Within this block every other thread of the process draws from private generators (the
    module functions dispatch on the calling thread), so the checks see the entry's draws only.
    Installed once per process, on first use.
    """
    install_thread_dispatch()
    _OWNER.active = _HELD[0] = True
    try:
        yield
    finally:
        _OWNER.active = _HELD[0] = False


@functools.cache
def install_thread_dispatch() -> None:
    """Route the module functions of Python's `random` and of numpy's legacy global RNG
    (`np.random.choice`, `np.random.get_state`, ...) to the global instance for the owning
    thread, else to a private one: in their modules and wherever a module imported one by name
    (Dask's message compression does `from random import randint`, and samples with it on its
    own thread while the next run trains). Outside every `own_host_rngs` block all threads
    draw from the global instances, as without it (an in-process run seeds numpy's and draws
    from it in the same process)."""
    dispatchers, numpy_private = {}, np.random.RandomState()
    for instance, private in ((random._inst, random.Random()), (np.random.mtrand._rand, numpy_private)):
        dispatchers[id(instance)] = {name: dispatcher(method, getattr(private, name))
                                     for name in dir(instance) if not name.startswith("_")
                                     and callable(method := getattr(instance, name))}
    # numpy's module functions that are not methods of its global instance but act on it
    functions = {id(getattr(np.random.mtrand, name)): dispatcher(getattr(np.random.mtrand, name), theirs)
                 for name, theirs in (("seed", numpy_private.seed), ("ranf", numpy_private.random_sample),
                                      ("sample", numpy_private.random_sample))}
    for module in list(sys.modules.values()):
        for name, value in list(vars(module).items()) if issubclass(type(module), types.ModuleType) else ():
            # type() first: reading attributes of arbitrary objects (or isinstance) can run code
            if type(value) in (types.MethodType, types.BuiltinMethodType):
                found = dispatchers.get(id(value.__self__), {})
                if value.__name__ in found:
                    setattr(module, name, found[value.__name__])
            elif id(value) in functions:
                setattr(module, name, functions[id(value)])


def dispatcher(mine, theirs):
    """`theirs` when another thread owns the global RNGs (`own_host_rngs`), else `mine`."""
    @functools.wraps(mine)
    def dispatch(*args, **kwargs):
        private = _HELD[0] and not getattr(_OWNER, "active", False)
        return (theirs if private else mine)(*args, **kwargs)
    return dispatch
