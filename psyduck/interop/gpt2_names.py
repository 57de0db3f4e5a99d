"""The one GPT-2 name table: PsyDuck's weight names <-> `transformers`' GPT2LMHeadModel (and llama.cpp's).

GPT-2 *is* one of PsyDuck's architectures (learned positions, pre-norm LayerNorm, GELU, biases), so
moving weights between the two is a renaming plus one transpose: GPT-2 stores its linear layers as
`Conv1D`, whose weight is (in, out), where `nn.Linear` keeps (out, in). The fused c_attn rows are
[all q heads, all k heads, all v heads], the same order as PsyDuck's qkv.

Each row names one module three ways: llama.cpp's GGUF stem (the exporters' internal layout),
PsyDuck's module path, and GPT-2's (inside `transformer.`, except `lm_head`). The exporter reads it
GGUF -> GPT-2 (`hf_name`), the importer GPT-2 -> PsyDuck (`psyduck_name`): one table, both ways.
"""

from __future__ import annotations

from typing import NamedTuple


class Gpt2Name(NamedTuple):
    gguf: str  # llama.cpp's stem, e.g. "attn_qkv" (per layer: blk.N.attn_qkv)
    psyduck: str  # PsyDuck's module, e.g. "attn.qkv" (per layer: blocks.N.attn.qkv)
    gpt2: str  # GPT-2's module, e.g. "attn.c_attn" (per layer: transformer.h.N.attn.c_attn)
    conv1d: bool  # a Conv1D in GPT-2: its weight is stored transposed
    per_layer: bool


NAMES: tuple[Gpt2Name, ...] = (
    Gpt2Name("token_embd", "tok_emb", "wte", False, False),
    Gpt2Name("position_embd", "pos_emb", "wpe", False, False),
    Gpt2Name("attn_norm", "norm1", "ln_1", False, True),
    Gpt2Name("attn_qkv", "attn.qkv", "attn.c_attn", True, True),
    Gpt2Name("attn_output", "attn.proj", "attn.c_proj", True, True),
    Gpt2Name("ffn_norm", "norm2", "ln_2", False, True),
    Gpt2Name("ffn_up", "ffn.up", "mlp.c_fc", True, True),
    Gpt2Name("ffn_down", "ffn.down", "mlp.c_proj", True, True),
    Gpt2Name("output_norm", "norm", "ln_f", False, False),
    Gpt2Name("output", "lm_head", "lm_head", False, False),
)
_BY_GGUF = {n.gguf: n for n in NAMES}
_BY_GPT2 = {n.gpt2: n for n in NAMES}


def _gpt2_full(name: Gpt2Name, layer: str | None, kind: str) -> str:
    """GPT2LMHeadModel's full tensor name: everything but lm_head lives inside `transformer.`."""
    if name.gpt2 == "lm_head":
        return f"lm_head.{kind}"
    inner = f"h.{layer}.{name.gpt2}" if name.per_layer else name.gpt2
    return f"transformer.{inner}.{kind}"


def hf_name(gguf_name: str) -> tuple[str, bool]:
    """("transformer.h.3.attn.c_attn.weight", transpose?) for "blk.3.attn_qkv.weight"."""
    stem, kind = gguf_name.rsplit(".", 1)
    layer = None
    if stem.startswith("blk."):
        _, layer, stem = stem.split(".", 2)
    name = _BY_GGUF[stem]
    return _gpt2_full(name, layer, kind), name.conv1d and kind == "weight"


def psyduck_name(gpt2_name: str) -> tuple[str, bool] | None:
    """("blocks.3.attn.qkv.weight", transpose?) for a GPT-2 tensor name, None for one PsyDuck lacks.

    The `transformer.` prefix is optional: the original GPT-2 checkpoints (GPT2Model) have none.
    """
    stem, kind = gpt2_name.removeprefix("transformer.").rsplit(".", 1)
    layer = None
    if stem.startswith("h."):
        _, layer, stem = stem.split(".", 2)
    name = _BY_GPT2.get(stem)
    if name is None or name.per_layer != (layer is not None):
        return None  # e.g. the causal-mask buffers `h.N.attn.bias` of old checkpoints
    ours = f"blocks.{layer}.{name.psyduck}" if name.per_layer else name.psyduck
    return f"{ours}.{kind}", name.conv1d and kind == "weight"


def expected_gpt2_names(n_layer: int, tied: bool) -> list[str]:
    """Every tensor a GPT2LMHeadModel of `n_layer` layers must hold (lm_head only when untied)."""
    names = []
    for name in NAMES:
        kinds = ("weight",) if name.gguf in ("token_embd", "position_embd", "output") else ("weight", "bias")
        if name.gguf == "output" and tied:
            continue
        layers = [str(i) for i in range(n_layer)] if name.per_layer else [None]
        names += [_gpt2_full(name, layer, kind) for layer in layers for kind in kinds]
    return names
