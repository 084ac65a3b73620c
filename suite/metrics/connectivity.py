"""Linear mode connectivity: loss/error barriers, Git Re-Basin weight matching and LLFC."""

# Conventions (see REFERENCES.md, "Linear mode connectivity"):
# - An MLP is a list of layers [(W_0, b_0), ..., (W_{L-1}, b_{L-1})], W_l (out, in), b_l (out,).
#   Hidden layers 0..L-2 are followed by ReLU; layer L-1 is the linear readout (logits).
# - The path between two networks is θ(α) = (1 − α)·θ_A + α·θ_B, so α = 0 is A and α = 1 is B
#   (REFERENCES.md writes the same path with α and 1 − α swapped; only the labelling differs).
# - A permutation `perm` of a hidden layer's units means "new unit i is old unit perm[i]":
#   W'_l = W_l[perm], b'_l = b_l[perm], W'_{l+1} = W_{l+1}[:, perm].

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils import parametrize

MLPParams = list[tuple[Tensor, Tensor]]


def _check_same_shapes(params_a: MLPParams, params_b: MLPParams) -> None:
    if len(params_a) != len(params_b):
        raise ValueError(f"networks have different depths: {len(params_a)} vs "
                         f"{len(params_b)} layers")
    for l, ((wa, ba), (wb, bb)) in enumerate(zip(params_a, params_b, strict=True)):
        if wa.shape != wb.shape or ba.shape != bb.shape:
            raise ValueError(
                f"layer {l} shapes differ: weight {tuple(wa.shape)} vs {tuple(wb.shape)}, "
                f"bias {tuple(ba.shape)} vs {tuple(bb.shape)}"
            )


def params_from_sequential(*, model: nn.Sequential) -> MLPParams:
    """The MLPParams of an nn.Sequential of the form [Flatten,] Linear, ReLU, ..., ReLU, Linear.

    Every Linear must have a bias. Anything else (other activations, dropout, normalization)
    raises ValueError, because mlp_forward would silently compute a different function. The
    tensors are detached views of the module's parameters (no copy): clone them before
    training the model further if the snapshot must stay fixed.
    """
    if not plain(model, nn.Sequential):
        raise ValueError(f"the model is a {type(model).__name__} with its own forward or hooks, "
                         "not an nn.Sequential")
    modules = list(model)
    if modules and plain(modules[0], nn.Flatten):
        modules = modules[1:]  # mlp_forward flattens trailing input dims itself
    params: MLPParams = []
    for i, module in enumerate(modules):
        expect_linear = i % 2 == 0
        if expect_linear and plain(module, nn.Linear):
            if module.bias is None:
                raise ValueError(f"Linear layer {i} has no bias; MLPParams needs (weight, bias)")
            params.append((module.weight.detach(), module.bias.detach()))
        elif not expect_linear and plain(module, nn.ReLU):
            continue
        else:
            want = "nn.Linear" if expect_linear else "nn.ReLU"
            raise ValueError(f"module {i} is {type(module).__name__}, expected {want} computing "
                             "its own forward")
    if not modules or not plain(modules[-1], nn.Linear):
        raise ValueError("the model must end with an nn.Linear readout")
    return params


def plain(module: nn.Module, cls: type[nn.Module]) -> bool:
    """`module` is a `cls` that computes what `cls` computes: not a subclass with its own forward
    (muP's MuReadout scales its output), a parametrized layer (weight_norm, spectral_norm) or a
    module with forward hooks, which mlp_forward's plain F.linear would silently drop."""
    return (isinstance(module, cls) and type(module).forward is cls.forward
            and not parametrize.is_parametrized(module)
            and not (module._forward_hooks or module._forward_pre_hooks))


def mlp_forward(
    *, params: MLPParams, x: Tensor, return_features: bool = False
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Logits (N, C) of the ReLU MLP `params` on inputs x (N, ...), trailing dims flattened.

    With return_features=True returns (logits, features), features being the pre-activations
    of every layer [(N, h_1), ..., (N, h_{L-1}), logits (N, C)]. Pre-activations (not ReLU
    outputs) are what LLFC compares; the first of them is linear in the weights.
    Differentiable; wrap in torch.no_grad() for evaluation.
    """
    h = x.flatten(1)  # (N, in)
    features = []
    for l, (weight, bias) in enumerate(params):
        h = F.linear(h, weight, bias)  # (N, out_l) pre-activation
        features.append(h)
        if l < len(params) - 1:
            h = F.relu(h)
    return (h, features) if return_features else h


def interpolate(*, params_a: MLPParams, params_b: MLPParams, alpha: float) -> MLPParams:
    """Parameters (1 − alpha)·θ_A + alpha·θ_B, layer by layer.

    Written as a weighted sum (not a + α(b − a)) so that α = 0 and α = 1 return A and B
    exactly, which keeps the barrier at the endpoints exactly 0.
    """
    _check_same_shapes(params_a, params_b)
    return [
        ((1.0 - alpha) * wa + alpha * wb, (1.0 - alpha) * ba + alpha * bb)
        for (wa, ba), (wb, bb) in zip(params_a, params_b, strict=True)
    ]


def barrier(*, values: np.ndarray | Tensor | list[float], alphas: np.ndarray | Tensor | list[float]
            ) -> float:
    """max_α [v(α) − ((1 − α)·v(0) + α·v(1))] over the evaluated grid (Frankle et al. 2020).

    values: (K,) loss or error along the path at alphas: (K,), a grid in [0, 1] (any order)
    containing 0 and 1 exactly. The endpoints contribute exactly 0, so the result is ≥ 0;
    it is 0 when the path never rises above the chord between its endpoints. A NaN anywhere
    in values gives NaN (a diverged evaluation is not a small barrier).
    """
    values = np.asarray(values, dtype=np.float64)
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or values.shape != alphas.shape:
        raise ValueError(f"values and alphas must be 1-D of equal length, got shapes "
                         f"{values.shape} and {alphas.shape}")
    if not np.all(np.isfinite(alphas)) or alphas.min() < 0.0 or alphas.max() > 1.0:
        raise ValueError(f"alphas must be finite and lie in [0, 1], got {alphas}")
    if not (np.any(alphas == 0.0) and np.any(alphas == 1.0)):
        raise ValueError(f"alphas must contain both endpoints 0 and 1 exactly, got {alphas}")
    v0 = values[np.flatnonzero(alphas == 0.0)[0]]
    v1 = values[np.flatnonzero(alphas == 1.0)[0]]
    chord = (1.0 - alphas) * v0 + alphas * v1  # (K,) linear interpolation of the endpoints
    return float(np.max(values - chord))


def path_curve(*, params_a: MLPParams, params_b: MLPParams, alphas: np.ndarray | list[float],
               x: Tensor, y: Tensor, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Mean cross-entropy and error (1 − accuracy) of θ(α) on (x, y) at each alpha.

    x: (N, ...) inputs, y: (N,) integer class labels. Returns {"alpha", "loss", "error"},
    each (K,) float64. batch_size bounds memory (None evaluates all N at once). Feed
    barrier(values=curve["loss"], alphas=curve["alpha"]) for the loss barrier.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    n = len(x)
    step = n if batch_size is None else batch_size
    loss, error = np.empty(len(alphas)), np.empty(len(alphas))
    with torch.no_grad():
        for k, alpha in enumerate(alphas):
            params = interpolate(params_a=params_a, params_b=params_b, alpha=float(alpha))
            total_loss, wrong = 0.0, 0
            for start in range(0, n, step):
                logits = mlp_forward(params=params, x=x[start:start + step])  # (n_b, C)
                target = y[start:start + step]
                total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
                wrong += int((logits.argmax(dim=1) != target).sum())
            loss[k], error[k] = total_loss / n, wrong / n
    return {"alpha": alphas, "loss": loss, "error": error}


def state_path_curve(*, model: nn.Module, state_a: dict[str, Tensor], state_b: dict[str, Tensor],
                     alphas: np.ndarray | list[float], x: Tensor, y: Tensor) -> dict[str, np.ndarray]:
    """path_curve for any architecture: θ(α) = (1 − α)·θ_A + α·θ_B over every floating tensor of
    the two state dicts, by name (parameters and buffers; integer buffers are taken from A),
    evaluated with `model`'s forward through torch.func.functional_call (model in eval mode).

    On an MLP it equals path_curve (tested); it needs no knowledge of the layout, so spawn and
    independent barriers apply to every model a task accepts.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    loss, error = np.empty(len(alphas)), np.empty(len(alphas))
    training = model.training
    model.eval()
    # Parameters' Python attributes (muP's `infshape`, read in forward) go on the tensors swapped in.
    extras = {n: vars(p) for n, p in model.named_parameters() if vars(p)}
    with torch.no_grad():
        for k, alpha in enumerate(alphas):
            state = {name: (1.0 - alpha) * a + alpha * state_b[name] if a.is_floating_point() else a
                     for name, a in state_a.items()}
            for name, attributes in extras.items():
                vars(state[name]).update(attributes)
            logits = torch.func.functional_call(model, state, (x,))  # (N, C)
            loss[k] = float(F.cross_entropy(logits, y))
            error[k] = float((logits.argmax(dim=1) != y).double().mean())
    model.train(training)
    return {"alpha": alphas, "loss": loss, "error": error}


def permute_params(*, params: MLPParams, perms: list[Tensor]) -> MLPParams:
    """Apply one permutation per hidden layer; the network computes exactly the same function.

    perms[l] (h_l,) LongTensor permutes the output units of hidden layer l: rows of W_l and
    b_l, and columns of W_{l+1}. New unit i is old unit perms[l][i]. len(perms) = L − 1.
    Pure indexing, so the result is bit-exact and differentiable.
    """
    if len(perms) != len(params) - 1:
        raise ValueError(f"need one permutation per hidden layer: {len(params) - 1}, "
                         f"got {len(perms)}")
    out = [(w, b) for w, b in params]
    for l, perm in enumerate(perms):
        weight, bias = out[l]
        perm = torch.as_tensor(perm, dtype=torch.long, device=weight.device)
        if not torch.equal(perm.sort().values, torch.arange(len(bias), device=weight.device)):
            raise ValueError(f"perms[{l}] is not a permutation of range({len(bias)})")
        out[l] = (weight[perm], bias[perm])  # output axis of layer l
        w_next, b_next = out[l + 1]
        out[l + 1] = (w_next[:, perm], b_next)  # input axis of layer l + 1
    return out


def matching_objective(*, params_a: MLPParams, params_b: MLPParams, perms: list[Tensor]) -> float:
    """Σ_l ⟨W_A,l, W'_B,l⟩ + ⟨b_A,l, b'_B,l⟩ with θ'_B = permute_params(θ_B, perms).

    The summed correlation that weight matching maximizes; since permutations preserve
    norms, maximizing it is minimizing ‖θ_A − θ'_B‖². Computed in float64.
    """
    permuted = permute_params(params=params_b, perms=perms)
    total = 0.0
    for (wa, ba), (wb, bb) in zip(params_a, permuted, strict=True):
        total += float((wa.double() * wb.double()).sum() + (ba.double() @ bb.double()))
    return total


def _layer_order(n: int, generator: torch.Generator | np.random.Generator) -> list[int]:
    if isinstance(generator, torch.Generator):
        return torch.randperm(n, generator=generator).tolist()
    if isinstance(generator, np.random.Generator):
        return generator.permutation(n).tolist()
    raise TypeError(f"generator must be a torch.Generator or a numpy Generator, "
                    f"got {type(generator).__name__}")


def weight_matching(*, params_a: MLPParams, params_b: MLPParams,
                    generator: torch.Generator | np.random.Generator,
                    max_rounds: int = 100) -> list[Tensor]:
    """Permutations that align B to A (Ainsworth et al. 2023, Git Re-Basin weight matching).

    Returns perms (one (h_l,) LongTensor per hidden layer, on the CPU) such that
    permute_params(params=params_b, perms=perms) is close to A in weight space.

    Objective: with P_l the permutation of hidden layer l (P_{-1} = P_{L-1} = identity for the
    input and the logits), maximize the summed correlation
        J = Σ_l ⟨W_A,l, P_l W_B,l P_{l-1}ᵀ⟩ + ⟨b_A,l, P_l b_B,l⟩.
    P_l appears only in layer l's output axis and layer l+1's input axis, so with the other
    permutations fixed J is, up to a constant, the linear assignment gain Σ_i C[i, perm_l[i]],
        C = W_A,l (W_B,l P_{l-1}ᵀ)ᵀ + b_A,l b_B,lᵀ + W_A,l+1ᵀ (P_{l+1} W_B,l+1),    (h_l, h_l)
    i.e. C[i, j] is the gain of putting B's unit j at A's position i. Coordinate descent:
    each round visits the hidden layers in a random order drawn from `generator` and solves
    linear_sum_assignment(C, maximize=True) for each, starting from identity permutations.
    A new permutation is kept only if it raises the gain by more than a rounding tolerance,
    so J never decreases and ties cannot cycle. Stops after a round that changes nothing, or
    after max_rounds rounds.

    The result is a local optimum of J: with two or more hidden layers it can depend on the
    starting (identity) labelling of B. With one hidden layer C does not depend on any other
    permutation and a single assignment finds the global optimum.
    """
    _check_same_shapes(params_a, params_b)
    # float64 numpy copies: the assignment solver needs numpy, and float64 keeps the gain
    # comparisons well away from rounding.
    wa = [w.detach().cpu().double().flatten(1).numpy() for w, _ in params_a]
    ba = [b.detach().cpu().double().numpy() for _, b in params_a]
    wb = [w.detach().cpu().double().flatten(1).numpy() for w, _ in params_b]
    bb = [b.detach().cpu().double().numpy() for _, b in params_b]
    n_hidden = len(params_a) - 1
    perms = [np.arange(len(b)) for b in ba[:-1]]
    for _ in range(max_rounds):
        changed = False
        for l in _layer_order(n_hidden, generator):
            w_in = wb[l] if l == 0 else wb[l][:, perms[l - 1]]  # (h_l, h_{l-1}) input permuted
            w_out = wb[l + 1] if l + 1 == n_hidden else wb[l + 1][perms[l + 1]]  # (h_{l+1}, h_l)
            cost = wa[l] @ w_in.T + np.outer(ba[l], bb[l]) + wa[l + 1].T @ w_out  # (h_l, h_l)
            rows, cols = linear_sum_assignment(cost, maximize=True)  # rows = 0..h_l-1
            old_gain = cost[rows, perms[l]].sum()
            new_gain = cost[rows, cols].sum()
            if new_gain > old_gain + 1e-12 * max(1.0, abs(old_gain)):
                perms[l] = cols
                changed = True
        if not changed:
            break
    return [torch.from_numpy(p.astype(np.int64)) for p in perms]


def _cosine(u: Tensor, v: Tensor, eps: float) -> Tensor:
    """Row-wise cosine of (M, D) float64 tensors, defined for zero rows.

    A row with norm ≤ eps counts as the zero vector: two zero rows are identical (cosine 1),
    a zero row and a non-zero row share no direction (cosine 0). Clamped to [−1, 1].
    """
    nu, nv = u.norm(dim=1), v.norm(dim=1)  # (M,)
    cos = (u * v).sum(dim=1) / (nu * nv).clamp_min(eps * eps)
    zero_u, zero_v = nu <= eps, nv <= eps
    cos = torch.where(zero_u | zero_v, (zero_u & zero_v).double(), cos)
    return cos.clamp(-1.0, 1.0)


def llfc_distance(*, features_interp: Tensor, features_a: Tensor, features_b: Tensor,
                  alpha: float, eps: float = 1e-12) -> dict[str, float]:
    """Layerwise linear feature connectivity of one layer (Zhou et al. 2023).

    features_*: (N, ...) features of one layer (flattened per sample to (N, D)) of θ(α),
    θ_A and θ_B on the same inputs. Compares F_α with (1 − α)·F_A + α·F_B:
      cosine             1 − cos on the whole flattened (N·D) feature matrices,
      cosine_per_sample  1 − cos per sample (row), averaged over the N samples,
      baseline           1 − cos between F_A and F_B (whole matrix): the distance expected
                         without LLFC, to compare `cosine` against,
      baseline_per_sample  the same, per sample averaged.
    All are in [0, 2]; 0 means the features are linearly connected. Vectors with norm ≤ eps
    count as zero: two zero vectors have distance 0, a zero and a non-zero vector distance 1.
    Computed in float64. Loop over layers for the whole network (mlp_forward's features).
    """
    if not (features_interp.shape == features_a.shape == features_b.shape):
        raise ValueError(f"feature shapes differ: {tuple(features_interp.shape)}, "
                         f"{tuple(features_a.shape)}, {tuple(features_b.shape)}")
    f_alpha = features_interp.detach().double().flatten(1)  # (N, D)
    f_a = features_a.detach().double().flatten(1)  # (N, D)
    f_b = features_b.detach().double().flatten(1)  # (N, D)
    f_lin = (1.0 - alpha) * f_a + alpha * f_b  # (N, D) interpolation of the features
    return {
        "cosine": float(1.0 - _cosine(f_alpha.reshape(1, -1), f_lin.reshape(1, -1), eps)[0]),
        "cosine_per_sample": float((1.0 - _cosine(f_alpha, f_lin, eps)).mean()),
        "baseline": float(1.0 - _cosine(f_a.reshape(1, -1), f_b.reshape(1, -1), eps)[0]),
        "baseline_per_sample": float((1.0 - _cosine(f_a, f_b, eps)).mean()),
    }
