"""The one Llama / Arcee name table: llama.cpp's tensor stems <-> PsyDuck's modules <-> `transformers`'.

LlamaForCausalLM and ArceeForCausalLM share their module names (Arcee's MLP simply has no
gate_proj). Each row names one module three ways: llama.cpp's GGUF stem (the exporters' internal
layout), PsyDuck's module path and the `transformers` one. q, k and v are three modules there and
in GGUF, but one fused `attn.qkv` in PsyDuck (rows [all q heads, all k heads, all v heads]), so
their rows name the fused module and the importer concatenates them in that order.

The exporter reads the table GGUF -> transformers (`hf_name`), the importer transformers -> GGUF
(`gguf_name`) and GGUF -> PsyDuck (`PSYDUCK_MODULES`): one table, every way.
"""

from __future__ import annotations

from typing import NamedTuple


class LlamaName(NamedTuple):
    gguf: str  # llama.cpp's stem, e.g. "attn_q" (per layer: blk.N.attn_q)
    psyduck: str  # PsyDuck's module, e.g. "attn.qkv" (per layer: blocks.N.attn.qkv)
    hf: str  # the transformers module, e.g. "self_attn.q_proj" (per layer: model.layers.N.self_attn.q_proj)
    per_layer: bool


NAMES: tuple[LlamaName, ...] = (
    LlamaName("token_embd", "tok_emb", "model.embed_tokens", False),
    LlamaName("attn_norm", "norm1", "input_layernorm", True),
    LlamaName("attn_q", "attn.qkv", "self_attn.q_proj", True),
    LlamaName("attn_k", "attn.qkv", "self_attn.k_proj", True),
    LlamaName("attn_v", "attn.qkv", "self_attn.v_proj", True),
    LlamaName("attn_output", "attn.proj", "self_attn.o_proj", True),
    LlamaName("ffn_norm", "norm2", "post_attention_layernorm", True),
    LlamaName("ffn_gate", "ffn.gate", "mlp.gate_proj", True),
    LlamaName("ffn_up", "ffn.up", "mlp.up_proj", True),
    LlamaName("ffn_down", "ffn.down", "mlp.down_proj", True),
    LlamaName("output_norm", "norm", "model.norm", False),
    LlamaName("output", "lm_head", "lm_head", False),
)
_BY_GGUF = {n.gguf: n for n in NAMES}
_BY_HF = {n.hf: n for n in NAMES}
PSYDUCK_MODULES = {n.gguf: n.psyduck for n in NAMES}  # GGUF stem -> PsyDuck module


def hf_name(logical: str) -> str:
    """"blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight" (a tensor of the exporters' layout)."""
    stem, kind = logical.rsplit(".", 1)
    if stem.startswith("blk."):
        _, layer, stem = stem.split(".", 2)
        return f"model.layers.{layer}.{_BY_GGUF[stem].hf}.{kind}"
    return f"{_BY_GGUF[stem].hf}.{kind}"


def gguf_name(hf: str) -> str | None:
    """The inverse of `hf_name`; None for a tensor with no row (e.g. an old checkpoint's rotary inv_freq buffer)."""
    stem, kind = hf.rsplit(".", 1)
    if stem.startswith("model.layers."):
        _, _, layer, stem = stem.split(".", 3)
        row = _BY_HF.get(stem)
        return f"blk.{layer}.{row.gguf}.{kind}" if row is not None and row.per_layer else None
    row = _BY_HF.get(stem)
    return f"{row.gguf}.{kind}" if row is not None and not row.per_layer else None
