"""A Llama or Arcee `transformers` folder as PsyDuck's config and weights (hf_import.py does the rest).

Both are PsyDuck architectures: RoPE in the half-split layout PsyDuck also uses (rotate_half, so q
and k are copied as they are), pre-norm RMSNorm, and an FFN that is SwiGLU (Llama, hidden_act
"silu") or non-gated (Arcee: hidden_act "relu2" is relu(x)², PsyDuck's activation="relu2"; also
tanh-GELU or ReLU). What PsyDuck does not compute is refused rather than approximated: RoPE scaling
(Llama 3's "llama3", YaRN, ...), a head size that does not split the width, biases on attention
but not on the MLP (or the reverse: PsyDuck's one `model.bias` sets both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from psyduck.config import ModelConfig
from psyduck.errors import PsyDuckError
from psyduck.interop.hf_import import TANH_GELUS
from psyduck.interop.llama_names import PSYDUCK_MODULES, gguf_name

# model_type -> hidden_act -> PsyDuck's activation
ACTIVATIONS = {
    "llama": {"silu": "swiglu"},
    "arcee": {"relu2": "relu2", "relu": "relu", **{name: "gelu" for name in TANH_GELUS}},
}
DEFAULT_ACT = {"llama": "silu", "arcee": "relu2"}  # LlamaConfig's and ArceeConfig's defaults


def llama_model_config(hf: dict[str, Any], folder: Path) -> ModelConfig:
    """A PsyDuck ModelConfig computing the same function as this Llama or Arcee config.json."""
    model_type = hf["model_type"]
    act = hf.get("hidden_act", DEFAULT_ACT[model_type])
    if act not in ACTIVATIONS[model_type]:
        raise PsyDuckError(
            f"{folder} uses hidden_act {act!r}; PsyDuck computes {', '.join(ACTIVATIONS[model_type])} exactly "
            f"in {model_type} models, so this model cannot be imported without changing its outputs"
        )
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}  # transformers 5.x, 4.x
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise PsyDuckError(f"{folder} uses {rope_type!r} RoPE scaling, which PsyDuck's RoPE does not have")
    attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attention_bias != mlp_bias:
        raise PsyDuckError(
            f"{folder} has attention_bias={attention_bias} but mlp_bias={mlp_bias}; PsyDuck's model.bias "
            "puts biases on both or neither"
        )
    def need(key: str) -> int:
        if not isinstance(hf.get(key), int) or hf[key] < 1:
            raise PsyDuckError(f"{folder}/config.json has no positive integer {key}; it is not a complete {model_type} config")
        return hf[key]

    d, heads = need("hidden_size"), need("num_attention_heads")
    head_dim = int(hf.get("head_dim") or d // heads)
    if head_dim * heads != d:
        raise PsyDuckError(
            f"{folder} has {heads} heads of {head_dim} for a width of {d}; PsyDuck's heads split the width exactly"
        )
    kv = int(hf.get("num_key_value_heads") or heads)
    return ModelConfig(
        vocab_size=need("vocab_size"),
        block_size=int(hf.get("max_position_embeddings", 2048)),
        d_model=d,
        n_layer=need("num_hidden_layers"),
        n_head=heads,
        n_kv_head=0 if kv == heads else kv,
        d_ff=need("intermediate_size"),
        dropout=0.0,  # Llama and Arcee have no dropout on the residual branches
        pos="rope",
        norm="rmsnorm",
        activation=ACTIVATIONS[model_type][act],
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bias=attention_bias,
        head_bias=False,
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    )


def llama_state(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, folder: Path) -> dict[str, torch.Tensor]:
    """Llama / Arcee tensors -> PsyDuck's state dict, through the one name table (llama_names)."""
    logical = {}
    for name, t in hf_state.items():
        stem = gguf_name(name)
        if stem is not None:  # rotary inv_freq buffers of old checkpoints, and anything PsyDuck has no use for
            logical[stem] = t.to(torch.float32)

    def take(name: str) -> torch.Tensor:
        if name not in logical:
            raise PsyDuckError(f"{folder} is missing the weights of {name} (llama.cpp's name); the folder is incomplete")
        return logical[name]

    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    out = {"tok_emb.weight": take("token_embd.weight"), "norm.weight": take("output_norm.weight")}
    out["lm_head.weight"] = out["tok_emb.weight"] if cfg.tie_embeddings else take("output.weight")
    linears = ["attn_output", "ffn_up", "ffn_down"] + (["ffn_gate"] if cfg.activation == "swiglu" else [])
    for i in range(cfg.n_layer):
        b, p = f"blk.{i}.", f"blocks.{i}."
        for stem in ("attn_norm", "ffn_norm"):
            out[f"{p}{PSYDUCK_MODULES[stem]}.weight"] = take(f"{b}{stem}.weight")
        for kind in kinds:
            out[f"{p}attn.qkv.{kind}"] = torch.cat([take(f"{b}attn_{n}.{kind}") for n in "qkv"])
            for stem in linears:
                out[f"{p}{PSYDUCK_MODULES[stem]}.{kind}"] = take(f"{b}{stem}.{kind}")
    return {k: v.contiguous() for k, v in out.items()}
