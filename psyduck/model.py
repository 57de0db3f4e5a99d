"""A GPT, readable top to bottom.

(One file on purpose, as nanoGPT's model.py is one: a reader follows a token from embedding to logits.)

A GPT turns a sequence of token ids into, at every position, a guess (a probability distribution)
for the token that comes next. It is a stack of identical blocks over a "residual stream": a vector
of width d_model per position that each block reads from and adds to.

    token ids (B, T)
      -> token embedding (+ position information)        (B, T, C)   C = d_model
      -> n_layer x Block:  x = x + attention(norm(x))     tokens look at earlier tokens
                           x = x + ffn(norm(x))           each position thinks on its own
      -> final norm -> output layer                      (B, T, V)   V = vocab size: the logits

Design choices (each picked once, in `ModelConfig`, and resolved in the constructors below, so no
forward pass asks again which variant it is):
- positions: sinusoidal (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762, sec. 3.5; the seed),
  learned (GPT-2), or rotary RoPE (Su et al. 2021, https://arxiv.org/abs/2104.09864; Llama);
- norm: LayerNorm or RMSNorm (https://arxiv.org/abs/1910.07467), always *pre*-norm (GPT-2 style);
- FFN activation: ReLU (the seed), GELU (GPT-2), SwiGLU (https://arxiv.org/abs/2002.05202; Llama),
  or ReLU² (Primer, https://arxiv.org/abs/2109.08668; modded-nanogpt, nanochat);
- grouped-query attention (https://arxiv.org/abs/2305.13245): n_kv_head key/value heads, shared;
- QK-norm: each head's queries and keys RMS-normalized before RoPE and the scores (as in
  modded-nanogpt and nanochat), so no score can grow without bound as the weights do;
- logit soft-capping (Gemma 2, https://arxiv.org/abs/2408.00118; modded-nanogpt): the logits pass
  through cap * tanh(logits / cap), in training, evaluation and generation alike (`GPT.logits`);
- tied or untied input/output embeddings, biases on or off (the output layer's on its own), dropout.

Attention comes in two forms with the *same weights*: `Attention`, one head with an explicit
lower-triangular mask as the seed's notes teach it, run head by head (the teaching path), and the
fused path in `MultiHeadAttention` (one matrix multiply for q, k and v of all heads, then PyTorch's
`scaled_dot_product_attention`, which picks a flash/memory-efficient kernel where it can).

The loss: `logits, loss = model(idx, targets)` as in the seed. Training passes the loss that
`train.loss` picks (`losses.make_loss`); on CPUs a `FusedLoss`, which computes the output layer and
the cross-entropy together, a block of rows at a time: the (B, T, V) logits never exist and logits
comes back None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from psyduck.config import ModelConfig
from psyduck.losses import OutputLoss, plain_loss, soft_cap

if TYPE_CHECKING:  # generation's KV cache (psyduck/generate/cache.py), which the attention fills
    from psyduck.generate.cache import KVCache, LayerCache


# ---------------------------------------------------------------------------------------------
# Feed-forward network
# ---------------------------------------------------------------------------------------------

class _ReLUSquaredFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001
        ctx.save_for_backward(r := F.relu(x))
        return r * r

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        return grad * ctx.saved_tensors[0] * 2.0


class ReLUSquared(nn.Module):
    """relu(x)², found by Primer's search (https://arxiv.org/abs/2109.08668): ReLU's zeros with a gradient
    that grows from 0 instead of jumping to 1 (modded-nanogpt, nanochat: non-gated). Its gradient,
    2·relu(x)·g, is written out: autograd's relu(x).square() took ~15% of a cpu-small step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReLUSquaredFn.apply(x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {  # model.activation -> the plain (non-gated) FFN's non-linearity
    "relu": nn.ReLU, "gelu": partial(nn.GELU, approximate="tanh"), "relu2": ReLUSquared}


class FFN(nn.Module):
    """The position-wise feed-forward network: each token's vector, on its own, through a small MLP.

    Linear d -> 4d, a non-linearity (`ACTIVATIONS`), Linear 4d -> d, dropout. Attention moves
    information between positions; the FFN is where most of the per-token "thinking" (and most
    parameters) lives. The 4x widening gives the non-linearity room to carve many features out of
    the residual stream. Dropout (Srivastava et al. 2014, https://jmlr.org/papers/v15/srivastava14a.html)
    zeroes a random fraction of the output while training, so no unit can count on any other being there.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.bias)  # d -> 4d
        self.act = ACTIVATIONS[cfg.activation]()
        self.down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.bias)  # 4d -> d
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.up(x))  # (B, T, 4C)
        return self.dropout(self.down(h))  # (B, T, C)


class SwiGLU(nn.Module):
    """The gated FFN of Llama (Shazeer 2020, https://arxiv.org/abs/2002.05202): silu(x W1) * (x W3), then W2.

    The gate decides, feature by feature, how much of the "up" projection passes. Three matrices of
    ~8/3 d (`ModelConfig.ffn_hidden`) keep the parameter count of the 4x MLP.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.bias)  # d -> ~8/3 d
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.bias)
        self.down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.bias)  # ~8/3 d -> d
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate(x)) * self.up(x)  # (B, T, hidden)
        return self.dropout(self.down(h))  # (B, T, C)


# ---------------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------------

def sinusoidal_positions(block_size: int, d_model: int) -> torch.Tensor:
    """The fixed position code of "Attention Is All You Need" (sec. 3.5): (block_size, d_model).

    PE[pos, 2i] = sin(pos / 10000^(2i/d)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/d)).
    Each pair of dimensions is a clock ticking at its own speed; together they give every position a
    unique fingerprint, and nearby positions similar ones.
    """
    pos = torch.arange(block_size, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(block_size, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
    return pe


def rope_tables(block_size: int, head_size: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for rotary embeddings, (block_size, head_size), in Llama's half-split layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + hs/2) pair of x by its position's angle. x: (B, H, T, hs); cos, sin: (T, hs).

    After rotation, q·k depends only on the *distance* between two positions, not where they are.
    """
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


Rope = tuple[torch.Tensor, torch.Tensor]  # the (cos, sin) rows of the positions in view, (T, hs) each
Start = int | torch.Tensor  # where the new tokens start: one position for all rows, or one per row (B,)


def positions(start: Start, length: int, device: torch.device) -> torch.Tensor:
    """The positions of `length` new tokens: (T,) from one start, (B, T) from per-row starts.

    Per-row starts are for a server's batch of sequences of different lengths (psyduck/serve/)."""
    steps = torch.arange(length, device=device)
    return steps + start if isinstance(start, int) else start[:, None] + steps


class SinusoidalPositions(nn.Module):
    """Adds the fixed sinusoidal code to the token embeddings: x (B, T, C) -> (x + PE[start:start+T], None)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_positions(cfg.block_size, cfg.d_model), persistent=False)

    def forward(self, x: torch.Tensor, start: Start) -> tuple[torch.Tensor, Rope | None]:
        return x + self.table[positions(start, x.shape[1], x.device)], None


class LearnedPositions(nn.Embedding):
    """GPT-2's learned positions: one trained vector per position, added like the sinusoidal code."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.block_size, cfg.d_model)

    def forward(self, x: torch.Tensor, start: Start) -> tuple[torch.Tensor, Rope | None]:  # type: ignore[override]
        return x + super().forward(positions(start, x.shape[1], x.device)), None


class RotaryPositions(nn.Module):
    """RoPE adds nothing to the embeddings: it hands attention the angles to rotate q and k by."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cos, sin = rope_tables(cfg.block_size, cfg.head_size, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, start: Start) -> tuple[torch.Tensor, Rope | None]:
        pos = positions(start, x.shape[1], x.device)  # per-row positions: (B, 1, T, hs) tables, one per row
        cos, sin = self.cos[pos], self.sin[pos]
        return x, (cos, sin) if pos.ndim == 1 else (cos[:, None], sin[:, None])


POSITIONS: dict[str, type[nn.Module]] = {
    "sinusoidal": SinusoidalPositions, "learned": LearnedPositions, "rope": RotaryPositions,
}


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """One attention head, step by step, exactly as the seed's notes teach.

    Every position emits a query ("what am I looking for?"), a key ("what do I contain?") and a value
    ("what do I pass on if chosen?"). Position i scores every position j by q_i·k_j, scaled by
    1/sqrt(head_size) so the scores do not grow with the width and saturate the softmax. The
    lower-triangular mask sets the scores of *future* positions (j > i) to -inf: a language model may
    only look back. Softmax turns scores into weights that sum to 1; dropout (while training) drops
    some of them; the output is the weighted sum of the values.

    The seed gave each head its own Wq, Wk, Wv Linear layers. Stacking the heads' matrices gives one
    big matrix, which is how `MultiHeadAttention` stores them; each head here receives its slice,
    already projected: q, k, v of shape (B, T, head_size).
    """

    def __init__(self, head_size: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.head_size = head_size
        self.register_buffer("mask", torch.tril(torch.ones(block_size, block_size)), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """`keep` (B, Tq, Tk), True where attending is allowed, replaces the causal mask (a server's batch)."""
        t_q, t_k = q.shape[-2], k.shape[-2]  # with a KV cache the queries are the last t_q of t_k positions
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)  # (B, Tq, Tk)
        mask = self.mask[t_k - t_q : t_k, :t_k] != 0 if keep is None else keep
        scores.masked_fill_(~mask, float("-inf"))  # no peeking at the future (in place)
        weights = F.softmax(scores, dim=-1)  # each row sums to 1
        weights = self.dropout(weights)
        return weights @ v  # (B, Tq, head_size)


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """`Attention`'s math for all heads at once, in PyTorch's fused kernel: (B, H, Tq, hs) -> (B, H, Tq, hs).

    `F.scaled_dot_product_attention` picks a flash or memory-efficient kernel where it can. With
    dropout on a CPU it runs its plain math path: the same steps as `Attention`, with the same
    random draws as `nn.Dropout` on the (B, H, Tq, Tk) weights. `keep` (B, 1, Tq, Tk), from a cache
    whose rows have different lengths, replaces the causal mask.
    """
    if keep is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
    t_q, t_k = q.shape[2], k.shape[2]
    if t_q == t_k or t_q == 1:  # plain causal prefill, or one new token that may see everything
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=t_q == t_k and t_q > 1)
    # several new tokens after a cached prefix: the causal mask shifted to the end
    mask = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(diagonal=t_k - t_q)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class MultiHeadAttention(nn.Module):
    """Several heads side by side, each free to look for something different, then mixed back.

    Heads run in parallel on slices of the residual stream (head_size = d_model / n_head); their
    outputs are concatenated and projected back to d_model. q, k, v for all heads come from one
    fused matrix multiply; the attention itself is picked once, here: `fused_attention` (the fast
    path), or one `Attention` per head (`ModelConfig.attention = "teaching"`). Same weights, same
    math, same outputs.

    With `qk_norm`, every head's q and k are RMS-normalized (over head_size, with a learned gain per
    dimension shared by the heads) before RoPE rotates them: a score q·k/sqrt(hs) is then bounded
    by the gains, not by how large the weights have grown, which lets training run at higher rates
    without the softmax saturating. modded-nanogpt and nanochat normalize without a gain; the gain
    starts at 1, so a fresh model computes exactly what theirs does.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = cfg.n_head, cfg.kv_heads, cfg.head_size
        self.dropout = cfg.dropout
        # rows: all query heads, then the key heads, then the value heads
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_size, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        if cfg.qk_norm:  # one gain vector for all query heads, one for all key heads
            self.q_norm: nn.Module = nn.RMSNorm(cfg.head_size, eps=cfg.norm_eps)
            self.k_norm: nn.Module = nn.RMSNorm(cfg.head_size, eps=cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()
        if cfg.attention == "teaching":  # the one head (and its block_size² mask) exists only here
            self.head = Attention(cfg.head_size, cfg.block_size, cfg.dropout)
            self.attend = self.head_by_head
        else:
            self.attend = self.all_heads_fused

    def head_by_head(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The teaching path: one `Attention` call per head, stacked back: (B, H, Tq, hs)."""
        keep = None if keep is None else keep[:, 0]
        return torch.stack([self.head(q[:, h], k[:, h], v[:, h], keep) for h in range(self.n_head)], dim=1)

    def all_heads_fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The fast path: every head in one `scaled_dot_product_attention` call: (B, H, Tq, hs)."""
        return fused_attention(q, k, v, self.dropout if self.training else 0.0, keep)

    def forward(self, x: torch.Tensor, rope: Rope | None = None, cache: "LayerCache | None" = None) -> torch.Tensor:
        B, T, C = x.shape
        hs = self.head_size
        q, k, v = self.qkv(x).split([self.n_head * hs, self.n_kv_head * hs, self.n_kv_head * hs], dim=-1)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, H, T, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, Hkv, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)  # QK-norm over each head's vector (or nothing)
        if rope is not None:  # rotary positions: rotate queries and keys by their positions' angles
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        keep = None  # the causal mask; a cache of rows of different lengths says what each row may see
        if cache is not None:  # generation: remember this step's keys and values, attend to all so far
            k, v = cache.append(k, v)
            keep = cache.keep
        if self.n_kv_head != self.n_head:  # grouped-query: each kv head serves n_head/n_kv_head queries
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        y = self.attend(q, k, v, keep)  # (B, H, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # concatenate the heads: (B, T, C)
        return self.resid_dropout(self.proj(y))


# ---------------------------------------------------------------------------------------------
# Block and model
# ---------------------------------------------------------------------------------------------

def make_norm(cfg: ModelConfig) -> nn.Module:
    """The normalization `cfg.norm` names: LayerNorm (the seed, GPT-2) or RMSNorm (Llama)."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class Block(nn.Module):
    """One transformer block: communicate (attention), then compute (FFN), each as a residual branch.

    Pre-norm: each branch normalizes its *input* and adds its output back to the untouched stream,
    so gradients flow straight down the residual path through many blocks.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = MultiHeadAttention(cfg)
        self.norm2 = make_norm(cfg)
        self.ffn = SwiGLU(cfg) if cfg.activation == "swiglu" else FFN(cfg)

    def forward(self, x: torch.Tensor, rope: Rope | None = None, cache: "LayerCache | None" = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, cache)
        x = x + self.ffn(self.norm2(x))
        return x


class GPT(nn.Module):
    """The whole model. `logits, loss = model(idx, targets)`, as in the seed. Every logit it gives
    out passes through `logits` (the loss is told the same cap), generation's twin included."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = POSITIONS[cfg.pos](cfg)  # adds positions to the embeddings, or hands RoPE its angles
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias)
        if cfg.tie_embeddings:  # one matrix reads tokens in and writes them out (Press & Wolf 2017)
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's last layer shrinks with depth, so the stream's
        # variance does not grow with the number of blocks (https://openai.com/research/better-language-models)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (a tied matrix counts once)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def body(self, idx: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        """Token ids (B, T) -> final hidden states (B, T, C), before the output layer."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0  # an int, or one start per row (B,)
        end = start + T if isinstance(start, int) else int(start.max()) + T
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} tokens exceeds block_size {self.config.block_size}")
        x, rope = self.pos_emb(self.tok_emb(idx), start)  # (B, T, C), and RoPE's angles or None
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache.layer(i) if cache is not None else None)
        if cache is not None:
            cache.length += T
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., C) -> logits (..., V): the output layer, soft-capped if configured."""
        return soft_cap(self.lm_head(h), self.config.logit_softcap)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
        *, loss: OutputLoss = plain_loss,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, V), mean cross-entropy against targets or None).

        Targets equal to -1 are ignored in the loss. `loss` computes the output layer and the loss
        together (psyduck/losses.py): `plain_loss`, the seed's, returns the logits too; training
        passes a `FusedLoss`, which never holds the (B, T, V) logits and returns None for them.

        With a `cache` (generation, psyduck/generate/): the tokens continue those the cache holds
        (positions from `cache.length`), their keys and values are added to it, and the logits are
        computed for the last position only, (B, 1, V): the one a next token is sampled from. A
        server's cache (psyduck/serve/rowcache.py) gives one length per row, (B,), and a `keep`
        mask per layer that replaces the causal one, so rows of different lengths share a step.
        """
        if cache is not None:
            if targets is not None:
                raise ValueError("a KV cache is for generation: pass targets without one")
            return self.logits(self.body(idx, cache)[:, -1:]), None  # (B, 1, V)
        h = self.body(idx)  # (B, T, C)
        if targets is None:
            return self.logits(h), None  # (B, T, V)
        return loss(h, self.lm_head, targets, softcap=self.config.logit_softcap)
