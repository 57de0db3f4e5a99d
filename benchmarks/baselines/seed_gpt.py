"""The seed's GPT, rewritten from its description: the baseline every benchmark compares against.

This is deliberately *not* PsyDuck's model. It is the straightforward implementation the project
started from (a notebook-style "GPT from scratch"), so that the benchmarks measure what PsyDuck's
engineering buys over it, at the same shapes:

- token embedding + *sinusoidal* positions (computed on every forward, as the seed did);
- n_layer pre-norm blocks: x = x + MHA(LayerNorm(x)); x = x + FFN(LayerNorm(x));
- multi-head attention as a ModuleList of per-head `Attention` modules, each with its own
  Wq, Wk, Wv Linear layers (no bias) and an explicit lower-triangular mask buffer, the head outputs
  concatenated and sent through a projection Linear + dropout;
- FFN: Linear d -> 4d, ReLU, Linear 4d -> d, Dropout;
- a final LayerNorm and an *untied* output Linear (with bias) to the vocabulary;
- the loss: the full (B*T, V) logits tensor and `F.cross_entropy`;
- PyTorch's default parameter initialisation (the seed set none of its own);
- `generate`: for every new token, crop the context to the last block_size tokens and run the
  *whole* window through the model again (logits for every position, keep the last).

The optimizer of the seed recipe is `torch.optim.AdamW(model.parameters(), lr=3e-4)`: the default
constructor (PyTorch then picks its default foreach/for-loop implementation, never the fused one).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class FeedForward(nn.Module):
    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.ffn = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.ReLU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(x)


class Attention(nn.Module):
    """One head: its own query/key/value projections and an explicit causal mask."""

    def __init__(self, d_model: int, head_size: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.head_size = head_size
        self.Wq = nn.Linear(d_model, head_size, bias=False)
        self.Wk = nn.Linear(d_model, head_size, bias=False)
        self.Wv = nn.Linear(d_model, head_size, bias=False)
        self.register_buffer("mask", torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.Wq(x), self.Wk(x), self.Wv(x)  # (B, T, hs) each
        weights = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_size)  # (B, T, T)
        weights = weights.masked_fill(self.mask[:T, :T] == 0, float("-inf"))
        weights = F.softmax(weights, dim=-1)
        weights = self.dropout(weights)
        return weights @ v  # (B, T, hs)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.heads = nn.ModuleList([Attention(d_model, d_model // n_head, block_size, dropout) for _ in range(n_head)])
        self.projection = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([head(x) for head in self.heads], dim=-1)  # (B, T, C)
        return self.dropout(self.projection(out))


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.mha = MultiHeadAttention(d_model, n_head, block_size, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mha(self.ln1(x))
        x = x + self.ffn(self.ln2(x))
        return x


class SeedGPT(nn.Module):
    """`logits, loss = model(idx, targets)`; `model.generate(idx, max_new_tokens)`."""

    def __init__(
        self, vocab_size: int, block_size: int = 128, d_model: int = 256, n_layer: int = 12, n_head: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.vocab_size, self.block_size, self.d_model = vocab_size, block_size, d_model
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.Sequential(
            *[TransformerBlock(d_model, n_head, block_size, dropout) for _ in range(n_layer)], nn.LayerNorm(d_model)
        )
        self.out = nn.Linear(d_model, vocab_size)

    @classmethod
    def from_config(cls, cfg) -> "SeedGPT":  # noqa: ANN001 - a psyduck ModelConfig
        """The seed architecture at the shape (vocab, context, width, depth, heads, dropout) of `cfg`."""
        return cls(cfg.vocab_size, cfg.block_size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.dropout)

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        pe = torch.zeros(self.block_size, self.d_model, device=device)
        position = torch.arange(0, self.block_size, dtype=torch.float, device=device).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, self.d_model, 2, device=device).float() * (-math.log(10000.0) / self.d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        return pe[:T]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        x = self.token_embedding(idx) + self.positions(T, idx.device)  # (B, T, C)
        x = self.blocks(x)
        logits = self.out(x)  # (B, T, V): the whole logits tensor
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss

    def generate(self, idx: torch.Tensor, max_new_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
        for _ in range(max_new_tokens):
            idx_crop = idx[:, -self.block_size :]
            logits, _ = self(idx_crop)  # the whole window, every time
            probs = F.softmax(logits[:, -1, :], dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def seed_optimizer(model: nn.Module, lr: float = 3e-4) -> torch.optim.AdamW:
    """The seed's optimizer: AdamW with its default constructor (no fused kernel)."""
    return torch.optim.AdamW(model.parameters(), lr=lr)
