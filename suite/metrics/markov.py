"""Sparse-lag Markov chains: exact conditional-entropy ladders, sampling, and stage metrics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from suite.metrics.stage_timing import crossing_step


def chain_check(*, lags: list[int], strengths: list[float], shifts: list[int], vocab: int) -> None:
    """Raise ValueError unless the lags are distinct positive integers, each with one shift
    and one positive strength."""
    if vocab < 2:
        raise ValueError(f"vocab must be >= 2, got {vocab}")
    if not lags or len(set(lags)) != len(lags) or min(lags) < 1 or len(strengths) != len(lags):
        raise ValueError(f"lags {lags} must be distinct integers >= 1, one per strength {strengths}")
    if len(shifts) != len(lags):
        raise ValueError(f"shifts {shifts} must give one shift per lag {lags}")
    if min(strengths) <= 0:
        raise ValueError(f"strengths {strengths} must be positive")


def next_token_probs(*, windows: torch.Tensor, lags: list[int], strengths: list[float],
                     shifts: list[int], vocab: int) -> torch.Tensor:
    """P(x_t = v | window) ∝ exp(Σ_j β_j [x_{t−k_j} + c_j ≡ v mod V]): each lag votes for its
    shifted token with log-odds β_j (a product of experts, which one attention layer whose
    heads each read one lag represents exactly).

    windows: (..., K) int64 with K = max lag and windows[..., K − k] = x_{t−k}.
    Returns (..., V) float64.
    """
    K = windows.shape[-1]
    logits = torch.zeros((*windows.shape[:-1], vocab), dtype=torch.float64)
    for k, b, c in zip(lags, strengths, shifts, strict=True):
        logits += b * torch.nn.functional.one_hot((windows[..., K - k] + c) % vocab, vocab).to(torch.float64)
    return logits.softmax(dim=-1)


def sample_sequences(*, n: int, length: int, lags: list[int], strengths: list[float],
                     shifts: list[int], vocab: int, generator: torch.Generator) -> torch.Tensor:
    """n sequences (n, length) int64: the first K = max lag tokens i.i.d. uniform, then each
    token drawn from `next_token_probs` of the K tokens before it."""
    K = max(lags)
    x = torch.empty(n, length, dtype=torch.int64)
    x[:, :K] = torch.randint(vocab, (n, K), generator=generator)
    for t in range(K, length):
        law = next_token_probs(windows=x[:, t - K: t], lags=lags, strengths=strengths, shifts=shifts,
                               vocab=vocab)  # (n, V)
        x[:, t] = torch.multinomial(law, 1, generator=generator).squeeze(1)
    return x


def window_laws(*, length: int, lags: list[int], strengths: list[float], shifts: list[int],
                vocab: int) -> list[np.ndarray]:
    """Exact joint laws of (x_{t−K}, …, x_{t−1}, x_t) for t = K … length−1, by enumeration.

    Each law is an array of shape (V,)*(K+1), axis i holding x_{t−K+i} (the last axis is x_t).
    The first window is uniform; each next window law sums the oldest token out of the joint.
    Cost O(length · V^(K+1)): meant for V^(K+1) up to a few million.
    """
    K = max(lags)
    grid = np.indices((vocab,) * (K + 1), sparse=True)  # grid[i]: values of axis i
    logits = np.zeros((vocab,) * (K + 1))
    for k, b, c in zip(lags, strengths, shifts, strict=True):
        logits = logits + b * ((grid[K - k] + c) % vocab == grid[K])
    cond = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)  # P(x_t | window)
    window = np.full((vocab,) * K, float(vocab) ** -K)
    laws = []
    for _ in range(K, length):
        joint = window[..., None] * cond
        laws.append(joint)
        window = joint.sum(axis=0)
    return laws


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats of a probability array (zeros contribute 0)."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def conditional_entropy(*, law: np.ndarray, subset: tuple[int, ...]) -> float:
    """H(x_t | x_{t−k}, k ∈ subset) in nats, from one joint law of `window_laws`."""
    K = law.ndim - 1
    keep = sorted({K - k for k in subset}) + [K]
    marginal = law.sum(axis=tuple(i for i in range(K + 1) if i not in keep))  # (V,)*(|S|+1)
    return entropy(marginal) - entropy(marginal.sum(axis=-1))


def entropy_table(*, length: int, lags: list[int], strengths: list[float], shifts: list[int],
                  vocab: int) -> dict[tuple[int, ...], float]:
    """Exact H(x_t | x_{t−k}, k ∈ S) averaged over the predicted positions t = K … length−1,
    for every subset S of the lags (sorted tuples; () is the marginal entropy, here log V)."""
    laws = window_laws(length=length, lags=lags, strengths=strengths, shifts=shifts, vocab=vocab)
    return {subset: float(np.mean([conditional_entropy(law=law, subset=subset)
                                    for law in laws]))
            for r in range(len(lags) + 1) for subset in itertools.combinations(sorted(lags), r)}


def greedy_ladder(table: dict[tuple[int, ...], float]) -> tuple[list[int], list[float]]:
    """The ladder of plateaus: from S = ∅, add at each stage the lag that lowers H(x_t | x_S)
    the most. Returns (lags in acquisition order, levels L_0 … L_m), L_j after j lags."""
    subset: tuple[int, ...] = ()
    order, levels = [], [table[()]]
    all_lags = max(table, key=len)
    while len(subset) < len(all_lags):
        k = min((k for k in all_lags if k not in subset),
                key=lambda k: table[tuple(sorted(subset + (k,)))])
        subset = tuple(sorted(subset + (k,)))
        order.append(k)
        levels.append(table[subset])
    return order, levels


def stage_times(*, steps: np.ndarray, loss: np.ndarray, levels: list[float]) -> np.ndarray:
    """Step at which stage j (j = 1 … m) completes: the loss first falls below the midpoint
    (L_{j−1} + L_j)/2 of the two ladder levels it moves between (+inf if never)."""
    return np.array([crossing_step(steps=steps, values=loss, threshold=(a + b) / 2, rising=False)
                     for a, b in zip(levels[:-1], levels[1:], strict=True)])


def plateau_gaps(*, steps: np.ndarray, loss: np.ndarray, levels: list[float],
                 times: np.ndarray) -> np.ndarray:
    """loss − L_j on plateau j = 0 … m−1, read where the loss is flattest between stage j's
    completion (step 0 for j = 0) and stage j+1's.

    Flatness is |Δloss / Δlog(1 + step)| between consecutive evaluations, so that log-spaced
    evaluations weigh early and late stretches alike. NaN where the interval is unknown
    (a stage never completed) or holds fewer than two evaluations.
    """
    steps, loss = np.asarray(steps, np.float64), np.asarray(loss, np.float64)
    slope = np.abs(np.diff(loss) / np.diff(np.log1p(steps)))  # (evals − 1,)
    starts = np.concatenate([[steps[0]], times[:-1]])
    gaps = []
    for j, (lo, hi) in enumerate(zip(starts, times, strict=True)):
        inside = np.flatnonzero((steps[:-1] >= lo) & (steps[1:] <= hi))
        if not (math.isfinite(lo) and math.isfinite(hi)) or len(inside) == 0:
            gaps.append(math.nan)
            continue
        i = inside[np.argmin(slope[inside])]
        gaps.append(float((loss[i] + loss[i + 1]) / 2 - levels[j]))
    return np.array(gaps)


def lag_attention(*, attention: torch.Tensor, lags: list[int], first: int) -> torch.Tensor:
    """Mean attention mass each head puts on the token at lag k_j of the predicted token.

    attention: (B, H, T, T) causal weights, row i the query at input position i, which
    predicts x_{i+1}: the token at lag k sits at key position i + 1 − k. Only queries i ≥
    first − 1 (predicted positions ≥ first, where every lag exists) count. Returns (H, m).
    """
    T = attention.shape[-1]
    rows = torch.arange(first - 1, T)
    return torch.stack([attention[:, :, rows, rows + 1 - k].mean(dim=(0, 2)) for k in lags], dim=1)


def lags_covered(*, mass: np.ndarray, threshold: float) -> int:
    """Distinct lags that some head specialises on: a head counts for lag j when its mass on
    lag j is at least `threshold` (> 1/2 makes each head count for one lag at most)."""
    return int(np.any(np.asarray(mass) >= threshold, axis=0).sum())
