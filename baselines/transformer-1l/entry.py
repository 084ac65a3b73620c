"""A one-layer transformer (Nanda et al. 2023's grokking model) on the sequence tasks."""

import torch
import torch.nn.functional as F
from torch import nn

from suite.init import from_generator


class Attention(nn.Module):
    """Multi-head softmax attention written out in einsums (vmap batches these across seeds;
    torch's fused CPU attention kernel has no batching rule and would fall back to a loop).
    With `last_only`, only the last position queries (the tasks that read one output)."""

    def __init__(self, d: int, heads: int, causal: bool, last_only: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.heads, self.causal, self.last_only = heads, causal, last_only

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the attention's output (B, Q, d), its softmax weights (B, H, Q, T)); Q = T, or 1
        with `last_only`."""
        B, T, d = h.shape
        q, k, v = self.qkv(h).view(B, T, 3, self.heads, d // self.heads).unbind(2)  # (B, T, H, d_h)
        if self.last_only:
            q = q[:, -1:]  # (B, 1, H, d_h)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / (d // self.heads) ** 0.5  # (B, H, T, T)
        if self.causal:
            future = torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = scores.softmax(-1)
        mixed = torch.einsum("bhqk,bkhe->bqhe", weights, v)  # (B, Q, H, d_h)
        return self.out(mixed.reshape(B, q.shape[1], d)), weights


class OneLayer(nn.Module):
    """Embeddings (tokens (B, T) int64, or vectors (B, T, n) float), one attention block and one
    ReLU MLP, both residual, no layer norm; returns the residual stream (B, Q, d) and the
    attention weights (B, H, Q, T): Q = T, or only the last position with `last_only` (a
    one-layer model's output at the last position reads nothing else, so the MLP and the
    queries of the other positions would be wasted work)."""

    def __init__(self, d: int, heads: int, d_mlp: int, *, vocab: int = 0, features: int = 0,
                 length: int = 0, causal: bool = False, last_only: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d) if vocab else nn.Linear(features, d)
        self.pos = nn.Parameter(0.02 * torch.randn(length, d)) if length else None
        self.attn = Attention(d, heads, causal, last_only)
        self.last_only = last_only
        self.mlp = nn.Sequential(nn.Linear(d, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)  # (B, T, d)
        if self.pos is not None:
            h = h + self.pos[: h.shape[1]]
        mixed, weights = self.attn(h)
        h = (h[:, -1:] if self.last_only else h) + mixed
        return h + self.mlp(h), weights


class ModularAddition(nn.Module):
    """'a b =' → logits of (a + b) mod p read at the '=' position: (N, 2) → (N, p)."""

    def __init__(self, p: int, d: int, heads: int, d_mlp: int) -> None:
        super().__init__()
        self.body = OneLayer(d, heads, d_mlp, vocab=p + 1, length=3, last_only=True)
        self.unembed = nn.Linear(d, p, bias=False)
        self.equals = p  # the '=' token

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        tokens = F.pad(pairs, (0, 1), value=self.equals)  # (N, 3)
        return self.unembed(self.body(tokens)[0][:, -1])


class NextToken(nn.Module):
    """Causal next-token logits: (B, T) → (B, T, V)."""

    def __init__(self, vocab: int, length: int, d: int, heads: int, d_mlp: int) -> None:
        super().__init__()
        self.body = OneLayer(d, heads, d_mlp, vocab=vocab, length=length, causal=True)
        self.unembed = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits_and_attention(tokens)[0]

    def logits_and_attention(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """markov-attention's optional interface: its attention metrics read the weights."""
        h, weights = self.body(tokens)
        return self.unembed(h), weights


class Regression(nn.Module):
    """Prompt tokens (B, L, d + 1) → the prediction of y_q (B,), read at the query row.
    No positions: the prompt is a set, and any L works (length generalisation)."""

    def __init__(self, features: int, d: int, heads: int, d_mlp: int) -> None:
        super().__init__()
        self.body = OneLayer(d, heads, d_mlp, features=features, last_only=True)
        self.readout = nn.Linear(d, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.readout(self.body(tokens)[0][:, -1]).squeeze(-1)


def make_model(task, hparams, generator):
    cfg, width = task.config, (hparams["d_model"], hparams["heads"], hparams["d_mlp"])
    builders = {
        "modular-addition": lambda: ModularAddition(cfg["p"], *width),
        # As many heads as the task's reference model: its attention curves are per head.
        "markov-attention": lambda: NextToken(cfg["vocab"], cfg["length"], hparams["d_model"],
                                              cfg["heads"], hparams["d_mlp"]),
        "in-context-regression": lambda: Regression(cfg["dim"] + 1, *width),
    }
    if task.name not in builders:
        return None  # inputs that are not sequences: no sensible transformer
    # nn.Linear and friends draw their initial weights from torch's global RNG: build them
    # from `generator` instead.
    return from_generator(builders[task.name], generator)
