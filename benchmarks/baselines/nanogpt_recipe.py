"""nanoGPT's model and its CPU recipe, written here from nanoGPT's README: the peer PsyDuck races.

nanoGPT (Karpathy's minimal GPT-2 reimplementation) is the best-known small, readable GPT; its
README gives a recipe for training on a laptop CPU. This module is a small rewrite from that
description (no code copied), so that benchmarks/time_to_quality.py can measure PsyDuck's
`cpu-small` against a public, well-tuned recipe rather than only against the seed.

The model (GPT-2's architecture, small):
- token embedding + *learned* position embedding, dropout;
- n_layer pre-LayerNorm blocks: x = x + Attn(LN(x)); x = x + MLP(LN(x)), LayerNorm and Linear
  layers with biases, as GPT-2 has them (nanoGPT's training script defaults to none; `bias=False`
  gives that variant, 5,760 parameters fewer);
- causal self-attention: one Linear makes q, k and v for all heads, then
  `F.scaled_dot_product_attention(is_causal=True)`, then an output projection;
- MLP: Linear d -> 4d, GELU, Linear 4d -> d;
- a final LayerNorm and an output layer *tied* to the token embedding (one matrix, two uses);
- GPT-2's initialisation: every weight N(0, 0.02), biases zero, and the two projections that write
  into the residual stream (attention's and the MLP's output) N(0, 0.02 / sqrt(2 * n_layer)), so
  the residual's variance does not grow with depth.

The recipe (the README's CPU command, on top of the character-level Shakespeare config): 4 layers,
4 heads, width 128, context 64, batch 12, dropout 0; AdamW at lr 1e-3 with betas (0.9, 0.99),
linear warm-up over 100 steps, then cosine decay to 1e-4; weight decay 0.1 on the 2-D weights only
(matrices and embeddings; biases and LayerNorm gains are not decayed), gradient norm clipped at 1.0.
nanoGPT runs this schedule over a fixed count of iterations (2,000 in the README); `lr_at` takes
the decay's progress as a fraction, so the benchmark can run it over a time budget instead.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # only a type hint: importing psyduck here would bypass common.py's path setup
    from psyduck.data.loader import TokenData


@dataclass
class NanoConfig:
    """The model's shape; the defaults are the README's CPU recipe (vocabulary set by the data)."""

    vocab_size: int = 8192
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True


@dataclass
class NanoRecipe:
    """The optimizer and schedule of the README's CPU recipe."""

    batch_size: int = 12
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0


class CausalSelfAttention(nn.Module):
    """All heads at once: one q/k/v projection, PyTorch's fused causal attention, one output projection."""

    def __init__(self, cfg: NanoConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # writes into the residual stream
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: NanoConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # writes into the residual stream
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: NanoConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class NanoGPT(nn.Module):
    """GPT-2's architecture at nanoGPT's CPU size: 1.84M parameters at a vocabulary of 8,192."""

    def __init__(self, cfg: NanoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied: the output layer reads with the input's matrix
        self.apply(self._init)
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) and, given targets, the mean cross-entropy over targets that are not -1."""
        T = idx.shape[1]
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)


def nanogpt_optimizer(model: nn.Module, recipe: NanoRecipe, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on the 2-D tensors only (matrices, embeddings), none on biases and
    gains, as nanoGPT configures it; the fused kernel on CUDA, as nanoGPT picks it."""
    params = [p for p in model.parameters() if p.requires_grad]  # the tied matrix appears once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.beta1, recipe.beta2), fused=device.type == "cuda")


def lr_at(recipe: NanoRecipe, step: int, progress: float) -> float:
    """The learning rate: linear warm-up over `warmup_iters` steps, then a cosine from lr to min_lr
    as `progress` (the fraction of the run done, 0..1) goes from 0 to 1."""
    if step < recipe.warmup_iters:
        return recipe.lr * (step + 1) / (recipe.warmup_iters + 1)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return recipe.min_lr + coeff * (recipe.lr - recipe.min_lr)


@dataclass
class NanoSetup:
    """The model's shape and the recipe together (shaped like PsyDuck's Config: .model, .train)."""

    model: NanoConfig
    train: NanoRecipe


class NanoGPTRecipe:
    """One side of the time-to-quality race: the model trained by the recipe, one step at a time.

    The benchmark calls `set_progress(fraction of the time budget spent)` before each step, and the
    cosine follows that fraction instead of a step count (warm-up stays 100 steps).
    """

    name = "nanoGPT recipe (README CPU recipe, BPE-8192)"
    tokenizer = "bpe-8192"

    def __init__(self, data: TokenData, device: torch.device, autocast: AbstractContextManager, seed: int = 1337) -> None:
        self.data, self.device, self.autocast = data, device, autocast
        self.cfg = NanoSetup(model=NanoConfig(vocab_size=data.vocab_size), train=NanoRecipe())
        torch.manual_seed(seed)
        self.model = NanoGPT(self.cfg.model).to(device)
        self.opt = nanogpt_optimizer(self.model, self.cfg.train, device)
        self.gen = torch.Generator().manual_seed(seed)
        self.step, self.progress = 0, 0.0

    def set_progress(self, fraction: float) -> None:
        self.progress = fraction

    def train_step(self) -> float:
        r = self.cfg.train
        for group in self.opt.param_groups:
            group["lr"] = lr_at(r, self.step, self.progress)
        x, y = self.data.get_batch("train", r.batch_size, self.cfg.model.block_size, self.gen)
        with self.autocast:
            _, loss = self.model(x.to(self.device), y.to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.grad_clip)
        self.opt.step()
        self.step += 1
        return loss.item()

    def loss_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy (nats) over the targets that are not -1: what HeldOut adds up."""
        logits, _ = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction="sum")

    def eval_mode(self, on: bool) -> None:
        self.model.train(not on)
