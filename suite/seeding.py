"""Explicit, purpose-separated random streams: no run ever touches torch's global RNG."""

import hashlib

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
