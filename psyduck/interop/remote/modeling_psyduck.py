"""A PsyDuck GPT as a `transformers` model: `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.

Written into an exported folder when no stock `transformers` class computes the model exactly (the
seed's output-layer bias, for one). It travels alone: it imports torch and `transformers`, never
`psyduck`. The modules carry PsyDuck's own names (tok_emb, blocks.N.attn.qkv, ...), so the
weights are PsyDuck's state dict as it is, and the math is PsyDuck's, step for step:

    tokens -> embedding (+ sinusoidal or learned positions) -> n_layer pre-norm blocks
           -> final norm -> output layer (with a bias when head_bias)

Each block: x + attention(norm1(x)) (rotary q/k when pos=rope, grouped-query when n_kv_head <
n_head), then x + ffn(norm2(x)) (ReLU, tanh-GELU or SwiGLU). No KV cache: every generation step
runs the whole sequence again, which is simple and exact, and fast enough at these sizes.
A 2-D `attention_mask` (left padding in a batch) masks the padded keys, and positions count
only the real tokens, so a padded row computes what it would alone.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_psyduck import PsyDuckConfig


def sinusoidal_table(block_size: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...): (block_size, d_model)."""
    pos = torch.arange(block_size, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(block_size, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
    return pe


def rope_angles(positions: torch.Tensor, head_size: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B, 1, T, hs) for each position, in the half-split layout: pairs (i, i + hs/2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.float32, device=positions.device) / head_size))
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, hs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + hs/2) pair of x (B, H, T, hs) by its position's angle."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def make_norm(config: PsyDuckConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class Attention(nn.Module):
    """Causal self-attention: fused q/k/v projection (query heads, then key heads, then value heads)."""

    def __init__(self, config: PsyDuckConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_size = config.d_model // config.n_head
        self.qkv = nn.Linear(config.d_model, (config.n_head + 2 * config.n_kv_head) * self.head_size, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        hs = self.head_size
        q, k, v = self.qkv(x).split([self.n_head * hs, self.n_kv_head * hs, self.n_kv_head * hs], dim=-1)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.n_kv_head != self.n_head:  # each key/value head serves a group of query heads
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class FFN(nn.Module):
    """up -> ReLU / tanh-GELU / ReLU² -> down, or SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: PsyDuckConfig) -> None:
        super().__init__()
        self.activation = config.activation
        self.up = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        if config.activation == "swiglu":
            self.gate = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        h = self.up(x)
        if self.activation == "relu2":
            return self.down(F.relu(h).square())
        return self.down(F.relu(h) if self.activation == "relu" else F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(self, config: PsyDuckConfig) -> None:
        super().__init__()
        self.norm1, self.attn = make_norm(config), Attention(config)
        self.norm2, self.ffn = make_norm(config), FFN(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, mask)
        return x + self.ffn(self.norm2(x))


class PsyDuckPreTrainedModel(PreTrainedModel):
    config_class = PsyDuckConfig
    base_model_prefix = "psyduck"
    _no_split_modules: ClassVar[list[str]] = ["Block"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Fresh weights (only for a model built from a config, not loaded): PsyDuck's normal(0, 0.02)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class PsyDuckForCausalLM(PsyDuckPreTrainedModel, GenerationMixin):
    """The whole model: input_ids (B, T) -> logits (B, T, vocab), PsyDuck's `GPT` with `transformers` manners."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "tok_emb.weight"}

    def __init__(self, config: PsyDuckConfig) -> None:
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        if config.pos == "learned":
            self.pos_emb = nn.Embedding(config.block_size, config.d_model)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.head_bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.tok_emb

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.tok_emb = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def _positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Each token's position: 0, 1, 2, ... counting only real (unpadded) tokens."""
        B, T = input_ids.shape
        if attention_mask is None:
            return torch.arange(T, device=input_ids.device).expand(B, T)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def _mask(self, attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
        """(B, 1, T, T) boolean: causal, padded keys hidden (a query always sees itself); None without padding."""
        if attention_mask is None or bool(attention_mask.all()):
            return None
        causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
        keys = attention_mask.bool()[:, None, None, :]
        eye = torch.eye(T, dtype=torch.bool, device=attention_mask.device)
        return causal & (keys | eye)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Any,  # cache, position_ids, ... from generation: unused (no KV cache)
    ) -> CausalLMOutputWithPast:
        config = self.config
        T = input_ids.shape[1]
        if T > config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {config.block_size}")
        if attention_mask is not None:
            attention_mask = attention_mask[:, -T:]
        positions = self._positions(input_ids, attention_mask)
        x = self.tok_emb(input_ids)
        rope = None
        if config.pos == "sinusoidal":
            x = x + sinusoidal_table(config.block_size, config.d_model).to(x.device, x.dtype)[positions]
        elif config.pos == "learned":
            x = x + self.pos_emb(positions)
        else:
            cos, sin = rope_angles(positions, config.d_model // config.n_head, config.rope_theta)
            rope = (cos.to(x.dtype), sin.to(x.dtype))
        mask = self._mask(attention_mask, T)
        for block in self.blocks:
            x = block(x, rope, mask)
        logits = self.lm_head(self.norm(x))
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> dict[str, Any]:
        """Every step sees the whole sequence so far (no KV cache), keeping only its last block_size tokens."""
        input_ids = input_ids[:, -self.config.block_size:]
        if attention_mask is not None:
            attention_mask = attention_mask[:, -input_ids.shape[1]:]
        return {"input_ids": input_ids, "attention_mask": attention_mask}
