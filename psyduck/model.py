"""A GPT, readable top to bottom.

A GPT turns a sequence of token ids into, at every position, a guess (a probability distribution)
for the token that comes next. It is a stack of identical blocks over a "residual stream": a vector
of width d_model per position that each block reads from and adds to.

    token ids (B, T)
      -> token embedding (+ position information)        (B, T, C)   C = d_model
      -> n_layer x Block:  x = x + attention(norm(x))     tokens look at earlier tokens
                           x = x + ffn(norm(x))           each position thinks on its own
      -> final norm -> output layer                      (B, T, V)   V = vocab size: the logits

Design choices (each picked once, in `ModelConfig`, when the model is built):
- positions: sinusoidal (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762, sec. 3.5; the seed),
  learned (GPT-2), or rotary RoPE (Su et al. 2021, https://arxiv.org/abs/2104.09864; Llama);
- norm: LayerNorm or RMSNorm (https://arxiv.org/abs/1910.07467), always *pre*-norm (GPT-2 style);
- FFN activation: ReLU (the seed), GELU (GPT-2), SwiGLU (https://arxiv.org/abs/2002.05202; Llama);
- grouped-query attention (https://arxiv.org/abs/2305.13245): n_kv_head key/value heads shared by
  groups of query heads;
- tied or untied input/output embeddings, biases on or off, dropout.

Attention comes in two forms with the *same weights*: `Attention`, one head with an explicit
lower-triangular mask as the seed's notes teach it, run head by head (the teaching path), and the
fused path in `MultiHeadAttention` (one matrix multiply for q, k and v of all heads, then PyTorch's
`scaled_dot_product_attention`, which picks a flash/memory-efficient kernel where it can).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from psyduck.config import ModelConfig
from psyduck.losses import chunked_cross_entropy

if TYPE_CHECKING:  # generation's KV cache (psyduck/generate/cache.py), which the attention fills
    from psyduck.generate.cache import KVCache, LayerCache


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------

class Dropout(nn.Module):
    """While training, zero each number with probability p and scale the rest by 1 / (1 - p).

    No unit can then count on any particular other one being there, which regularizes the network
    (Srivastava et al. 2014, https://jmlr.org/papers/v15/srivastava14a.html); the scaling keeps each
    number's expected value unchanged, so nothing needs rescaling at evaluation, when it is off.

    The same as `nn.Dropout` except, on CPUs, where the random numbers come from: torch's Bernoulli
    sampler there takes ~16 ms for 2M numbers (the attention weights of one seed-60m block). Here
    each number gets 16 random bits (64-bit draws cut in four): ~4 ms; seed-60m's blocks, forward +
    backward, 1.51 s instead of 1.77 with nn.Dropout (interleaved A/B on the 2-core CI-class CPU).
    The 16 bits round p to a multiple of 1/65536 (0.1 -> 0.100006), and the survivors are scaled by
    1 / (1 - the rounded p), so the expectation stays exact. Draws come from torch's generator, so
    `torch.manual_seed` and checkpointed RNG states reproduce them.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)  # one fused kernel on GPUs
        dropped = round(self.p * 65536)  # of the 65,536 values of 16 random bits, this many drop
        bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device)
        bits = bits.random_(-(2**63), None).view(torch.int16)[: x.numel()].view(x.shape)  # uniform in [-32768, 32767]
        keep = bits >= dropped - 32768
        return _MaskScale.apply(x, keep, 65536 / (65536 - dropped) if dropped < 65536 else 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _MaskScale(torch.autograd.Function):
    """x * keep * scale, keeping only the boolean mask (1 byte a number) for the backward pass.

    `torch.where(keep, x, 0)` rather than `x * keep`: multiplying by a boolean tensor first converts
    it to floats, one more pass (seed-60m's attention weights, one block, cache cold: 2.8 ms instead
    of 10.4)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)  # one new tensor, not two

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


# ---------------------------------------------------------------------------------------------
# Feed-forward network
# ---------------------------------------------------------------------------------------------

class FFN(nn.Module):
    """The position-wise feed-forward network: each token's vector, on its own, through a small MLP.

    Linear d -> 4d, a non-linearity, Linear 4d -> d, Dropout. Attention moves information between
    positions; the FFN is where most of the per-token "thinking" (and most parameters) lives. The
    4x widening gives the non-linearity room to carve many features out of the residual stream.

    With SwiGLU the hidden layer is gated: silu(x W1) * (x W3), then W2 (three matrices of ~8/3 d,
    keeping the parameter count of the 4x MLP).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = cfg.ffn_hidden
        self.swiglu = cfg.activation == "swiglu"
        self.up = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)  # d -> 4d
        self.gate = nn.Linear(cfg.d_model, hidden, bias=cfg.bias) if self.swiglu else None
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(approximate="tanh"), "swiglu": nn.SiLU()}[cfg.activation]
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)  # 4d -> d
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = self.act(self.gate(x)) * self.up(x)
        else:
            h = self.act(self.up(x))  # (B, T, 4C)
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


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """One attention head, step by step, exactly as the seed's notes teach.

    Every position emits a query ("what am I looking for?"), a key ("what do I contain?") and a value
    ("what do I pass on if chosen?"). Position i scores every position j by q_i·k_j, scaled by
    1/sqrt(head_size) so the scores do not grow with the width and saturate the softmax. The
    lower-triangular mask sets the scores of *future* positions (j > i) to -inf: a language model may
    only look back. Softmax turns scores into weights that sum to 1; the output is the weighted sum of
    the values.

    The seed gave each head its own Wq, Wk, Wv Linear layers. Stacking the heads' matrices gives one
    big matrix, which is how `MultiHeadAttention` stores them; each head here receives its slice,
    already projected: q, k, v of shape (B, T, head_size).
    """

    def __init__(self, head_size: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.head_size = head_size
        self.register_buffer("mask", torch.tril(torch.ones(block_size, block_size)), persistent=False)
        self.dropout = Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t_q, t_k = q.shape[-2], k.shape[-2]  # with a KV cache the queries are the last t_q of t_k positions
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)  # (B, Tq, Tk)
        mask = self.mask[t_k - t_q : t_k, :t_k]
        scores.masked_fill_(mask == 0, float("-inf"))  # no peeking at the future (in place)
        weights = F.softmax(scores, dim=-1)  # each row sums to 1
        weights = self.dropout(weights)
        return weights @ v  # (B, Tq, head_size)


class MultiHeadAttention(nn.Module):
    """Several heads side by side, each free to look for something different, then mixed back.

    Heads run in parallel on slices of the residual stream (head_size = d_model / n_head); their
    outputs are concatenated and projected back to d_model. The fast path computes q, k, v for all
    heads with one fused matrix multiply and runs them through `F.scaled_dot_product_attention`;
    the teaching path (`ModelConfig.attention = "teaching"`) runs one `Attention` per head. Same
    weights, same math, same outputs.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = cfg.n_head, cfg.kv_heads, cfg.head_size
        self.dropout = cfg.dropout
        self.teaching = cfg.attention == "teaching"
        # rows: all query heads, then the key heads, then the value heads
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_size, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.resid_dropout = Dropout(cfg.dropout)
        self.head = Attention(cfg.head_size, cfg.block_size, cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: "LayerCache | None" = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        hs = self.head_size
        q, k, v = self.qkv(x).split([self.n_head * hs, self.n_kv_head * hs, self.n_kv_head * hs], dim=-1)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, H, T, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, Hkv, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # generation: remember this step's keys and values, attend to all so far
            k, v = cache.append(k, v)
        if self.n_kv_head != self.n_head:  # grouped-query: each kv head serves n_head/n_kv_head queries
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        if self.teaching:
            y = torch.stack([self.head(q[:, h], k[:, h], v[:, h]) for h in range(self.n_head)], dim=1)
        elif self.training and self.dropout > 0 and q.device.type == "cpu" and q.shape[2] == k.shape[2]:
            # SDPA's CPU kernels have no dropout: it would fall back to its own unfused math and torch's
            # Bernoulli sampler. The teaching head's math on all heads at once is faster, with the
            # mask from `Dropout`.
            y = self._explicit_attention(q, k, v)  # (B, H, T, hs)
        else:
            t_q, t_k = q.shape[2], k.shape[2]
            p = self.dropout if self.training else 0.0
            if t_q == t_k or t_q == 1:  # plain causal prefill, or one new token that may see everything
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=t_q == t_k and t_q > 1)
            else:  # several new tokens after a cached prefix: causal mask shifted to the end
                mask = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(diagonal=t_k - t_q)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # concatenate the heads: (B, T, C)
        return self.resid_dropout(self.proj(y))

    def _explicit_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The teaching head's math for all heads at once (B, H, T, hs) -> (B, H, T, hs), causal.

        Two of its passes over the (B, H, T, T) scores are folded into the matrix multiply:
        `baddbmm` scales q @ k^T by 1/sqrt(head_size) (alpha) and adds the mask as a bias that is
        -inf above the diagonal, so no separate division and masked_fill run forward or backward.
        """
        B, H, T, hs = q.shape
        bias = self.head.mask[:T, :T].log().to(q.dtype)  # 1 -> 0 (may look), 0 -> -inf (the future)
        scores = torch.baddbmm(bias, q.reshape(B * H, T, hs), k.reshape(B * H, T, hs).transpose(1, 2),
                               alpha=1 / math.sqrt(hs))  # (B*H, T, T)
        weights = self.head.dropout(F.softmax(scores, dim=-1))
        return torch.bmm(weights, v.reshape(B * H, T, hs)).view(B, H, T, hs)


# ---------------------------------------------------------------------------------------------
# Block and model
# ---------------------------------------------------------------------------------------------

def make_norm(cfg: ModelConfig) -> nn.Module:
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
        self.ffn = FFN(cfg)

    def forward(self, x: torch.Tensor, rope=None, cache: "LayerCache | None" = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, cache)
        x = x + self.ffn(self.norm2(x))
        return x


class GPT(nn.Module):
    """The whole model. `logits, loss = model(idx, targets)`, as in the seed."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.pos == "learned" else None
        if cfg.pos == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(cfg.block_size, cfg.d_model), persistent=False)
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.block_size, cfg.head_size, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias and not cfg.tie_embeddings)
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
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        elif self.config.pos == "sinusoidal":
            x = x + self.pos_table[start : start + T]
        rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T]) if self.config.pos == "rope" else None
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache.layer(i) if cache is not None else None)
        if cache is not None:
            cache.length += T
        return self.norm(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, V), mean cross-entropy against targets or None).

        Targets equal to -1 are ignored in the loss. Training passes `return_logits=False`: then the
        loss is computed without keeping the whole (B, T, V) logits tensor, and logits is None.

        With a `cache` (generation, psyduck/generate/): the tokens continue those the cache holds
        (positions from `cache.length`), their keys and values are added to it, and the logits are
        computed for the last position only, (B, 1, V): the one a next token is sampled from.
        """
        if cache is not None:
            if targets is not None:
                raise ValueError("a KV cache is for generation: pass targets without one")
            return self.lm_head(self.body(idx, cache)[:, -1:]), None  # (B, 1, V)
        h = self.body(idx)  # (B, T, C)
        if targets is not None and not return_logits:
            return None, chunked_cross_entropy(h, self.lm_head.weight, self.lm_head.bias, targets)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss
