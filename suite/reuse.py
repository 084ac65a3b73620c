"""Whether make_model returned tensors another model holds or trained (one set of weights, two seeds)."""

from __future__ import annotations

import functools
import weakref

import torch

# Every trainable parameter an entry's make_model has returned in this process, held weakly,
# by its storage: a model returned twice, or built again over the same storage
# (nn.Parameter(CACHED), Embedding.from_pretrained(CACHED, freeze=False)), is one set of weights
# for two seeds. A frozen module shared by every model trains nothing, so it is allowed.
RETURNED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage().data_ptr()


def returned_before(model: torch.nn.Module) -> str | None:
    """The name of a trainable parameter of `model` whose storage belongs to a parameter that
    make_model returned before (and that still exists), else None; records the model's."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad and p.numel()}
    reused = None
    for name, p in params.items():
        other = RETURNED.get(storage_key(p))
        if other is not None and storage_key(other) == storage_key(p):
            reused = name
            break
    for p in params.values():
        RETURNED[storage_key(p)] = p
    return reused


# The trainable parameters of the architecture entries' models trained in this process: where
# each lay and the sum of its final values. A new model whose parameter lies there holding those
# values starts from trained weights (make_model wrapped a cached tensor that training wrote to).
# Only parameters that training moved count (BUILT: each returned parameter's sum as built): one
# that got no gradient holds its initial values, which a fresh build of the same seed has too.
TRAINED: dict[tuple[str, int, int], float] = {}
BUILT: dict[int, tuple[weakref.ref, float]] = {}


def trained_key(p: torch.Tensor) -> tuple[str, int, int]:
    return str(p.device), p.data_ptr(), p.numel()


def value_sum(p: torch.Tensor) -> float:
    return float(p.detach().double().sum())


def record_built(model: torch.nn.Module) -> None:
    for p in model.parameters():
        if p.requires_grad and p.numel():
            forget = functools.partial(lambda key, _: BUILT.pop(key, None), id(p))  # when p is gone
            BUILT[id(p)] = (weakref.ref(p, forget), value_sum(p))


def record_trained(model: torch.nn.Module) -> None:
    for p in model.parameters():
        ref, built = BUILT.get(id(p), (None, None))
        if ref is not None and ref() is p and value_sum(p) != built:  # moved by training
            TRAINED[trained_key(p)] = value_sum(p)


def trained_before(model: torch.nn.Module) -> str | None:
    """The name of a trainable parameter of `model` holding the final values of one trained
    before in this process, at the same place, else None."""
    return next((name for name, p in model.named_parameters() if p.requires_grad and p.numel()
                 and TRAINED.get(trained_key(p)) == value_sum(p)), None)
