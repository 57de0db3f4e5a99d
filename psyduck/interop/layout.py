"""One internal layout for every export: the weights under llama.cpp's tensor names, float32.

Both exporters start here. `logical_tensors` gathers a model's weights under llama.cpp's names
(`blk.N.attn_qkv.weight`, ...) in PyTorch's (out, in) layout; the Hugging Face writer renames them
(and transposes for GPT-2's Conv1D layers), the GGUF writer permutes llama's q/k rows.

Faithful stand-ins where the target lacks a feature but the function is the same:
- sinusoidal positions are a fixed table added to the token embeddings, so GPT-2's learned position
  table holding those values computes them exactly (it would become trainable if fine-tuned there);
- grouped-query attention in GPT-2 (which has none): each key/value head is repeated for its group
  of query heads, which is exactly what PsyDuck's attention does at run time;
- `bias=false` in GPT-2 (which always has biases): zero biases;
- an output-layer bias that is exactly zero (an untrained or imported model) is dropped; a non-zero
  one is refused here: none of these targets has one (the Hugging Face export then ships PsyDuck's
  own code instead, hf_remote.py, and never calls this with one).
"""

from __future__ import annotations

import torch

from psyduck.config import ModelConfig
from psyduck.errors import PsyDuckError

# the setting that gives the output layer a bias, as the refusal names it
OUTPUT_BIAS_SETTING = "model.head_bias=true"


def output_bias(state: dict[str, torch.Tensor], cfg: ModelConfig) -> torch.Tensor | None:
    """The output layer's bias, None when the model has none (the one place that knows where it is)."""
    return state.get("lm_head.bias")


def _split_qkv(
    qkv_w: torch.Tensor, qkv_b: torch.Tensor | None, cfg: ModelConfig, repeat_kv: bool
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """q, k, v rows of the fused projection; with `repeat_kv` each kv head is repeated for its group."""
    C, hs, H, Hkv = cfg.d_model, cfg.head_size, cfg.n_head, cfg.kv_heads
    parts = {"q": (0, H * hs), "k": (H * hs, Hkv * hs), "v": ((H + Hkv) * hs, Hkv * hs)}
    pieces = {}
    for name, (start, size) in parts.items():
        w = qkv_w[start : start + size]
        b = qkv_b[start : start + size] if qkv_b is not None else None
        if repeat_kv and name != "q" and Hkv != H:
            w = w.view(Hkv, hs, C).repeat_interleave(H // Hkv, dim=0).reshape(H * hs, C)
            b = b.view(Hkv, hs).repeat_interleave(H // Hkv, dim=0).reshape(H * hs) if b is not None else None
        pieces[name] = (w, b)
    return pieces


def _bias(sd: dict[str, torch.Tensor], name: str, size: int, gpt2: bool) -> torch.Tensor | None:
    """A bias, or zeros for GPT-2 (which always has biases: zeros compute the same), or None."""
    if name in sd:
        return sd[name]
    return torch.zeros(size) if gpt2 else None


def _block_tensors(sd: dict[str, torch.Tensor], cfg: ModelConfig, i: int, gpt2: bool) -> dict[str, torch.Tensor]:
    """Block `i`'s weights under llama.cpp's names (blk.i.*)."""
    C, hs, H, Hkv = cfg.d_model, cfg.head_size, cfg.n_head, cfg.kv_heads
    p, b = f"blocks.{i}.", f"blk.{i}."
    out = {b + "attn_norm.weight": sd[p + "norm1.weight"], b + "ffn_norm.weight": sd[p + "norm2.weight"]}
    if gpt2:
        out[b + "attn_norm.bias"] = _bias(sd, p + "norm1.bias", C, gpt2)
        out[b + "ffn_norm.bias"] = _bias(sd, p + "norm2.bias", C, gpt2)
    pieces = _split_qkv(sd[p + "attn.qkv.weight"], _bias(sd, p + "attn.qkv.bias", (H + 2 * Hkv) * hs, gpt2), cfg, gpt2)
    if gpt2:
        out[b + "attn_qkv.weight"] = torch.cat([pieces[n][0] for n in "qkv"])
        out[b + "attn_qkv.bias"] = torch.cat([pieces[n][1] for n in "qkv"])
    else:
        for n in "qkv":
            out[b + f"attn_{n}.weight"] = pieces[n][0]
            if pieces[n][1] is not None:
                out[b + f"attn_{n}.bias"] = pieces[n][1]
    linears = {"attn_output": "attn.proj", "ffn_up": "ffn.up", "ffn_down": "ffn.down"}
    if cfg.activation == "swiglu":
        linears["ffn_gate"] = "ffn.gate"
    for gname, pname in linears.items():
        out[b + gname + ".weight"] = sd[p + pname + ".weight"]
        bb = _bias(sd, p + pname + ".bias", sd[p + pname + ".weight"].shape[0], gpt2)
        if bb is not None:
            out[b + gname + ".bias"] = bb
    return out


def logical_tensors(model: torch.nn.Module, family: str, label: str) -> dict[str, torch.Tensor]:
    """The model's weights under llama.cpp's tensor names (blk.N.attn_qkv.weight, ...), float32.

    `family` is "gpt2" (fused qkv, LayerNorm weights and biases, k/v heads repeated to n_head) or
    "llama"/"arcee" (separate q, k, v in the Hugging Face half-split rotary layout). `label` names
    the target format in refusals.
    """
    cfg: ModelConfig = model.config
    sd = {k: v.detach().to(torch.float32).cpu() for k, v in model.state_dict().items()}
    gpt2 = family == "gpt2"
    out: dict[str, torch.Tensor] = {"token_embd.weight": sd["tok_emb.weight"]}
    if gpt2:
        if cfg.pos == "learned":
            out["position_embd.weight"] = sd["pos_emb.weight"]
        else:  # the fixed sinusoidal table, held by GPT-2's position embedding
            from psyduck.model import sinusoidal_positions

            out["position_embd.weight"] = sinusoidal_positions(cfg.block_size, cfg.d_model)
    for i in range(cfg.n_layer):
        out.update(_block_tensors(sd, cfg, i, gpt2))
    out["output_norm.weight"] = sd["norm.weight"]
    if gpt2:
        out["output_norm.bias"] = _bias(sd, "norm.bias", cfg.d_model, gpt2)
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
        head_bias = output_bias(sd, cfg)
        if head_bias is not None and bool(head_bias.any()):
            target = "GPT-2" if gpt2 else family.capitalize()
            raise PsyDuckError(
                f"cannot export to {label}: the output layer has a non-zero bias ({OUTPUT_BIAS_SETTING}) "
                f"and {target} has none; export a model trained with model.head_bias=false"
            )
    return {k: v.contiguous() for k, v in out.items()}
