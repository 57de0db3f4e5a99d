"""A run as one GGUF file, the format of llama.cpp and its family (ollama, LM Studio, ...).

    psyduck export runs/demo --format gguf --out exports/demo.gguf

Exact math or nothing, as for Hugging Face (see hf_export.py):

    positions            norm       FFN      llama.cpp architecture
    learned, sinusoidal  layernorm  gelu     gpt2
    rope                 rmsnorm    swiglu   llama

Rotary embeddings: PsyDuck (like `transformers`) rotates (i, i + hs/2) pairs; llama.cpp rotates
adjacent pairs instead, so the q/k rows are permuted exactly as llama.cpp's convert_hf_to_gguf.py
(`LlamaModel.permute`) does for a Hugging Face Llama. float32 (file type ALL_F32): an export is a
copy, quantize downstream. Only this writer needs the `gguf` package, imported when it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from psyduck.config import ModelConfig
from psyduck.errors import PsyDuckError
from psyduck.interop.hf_tokenizer import hf_tokenizer_json
from psyduck.interop.layout import logical_tensors, refusal
from psyduck.io import atomic_path
from psyduck.tokenizer import CL100K, Tokenizer

GGUF_LABEL = "GGUF (llama.cpp)"
GGUF_EXPORTS = (
    "learned or sinusoidal positions + layernorm + gelu (gpt2), rope + rmsnorm + swiglu (llama), "
    "e.g. presets tiny, gpt2-124m"
)


def gguf_arch(cfg: ModelConfig) -> str:
    """"gpt2" or "llama": the llama.cpp architecture that computes this model exactly."""
    if cfg.pos in ("learned", "sinusoidal") and cfg.norm == "layernorm" and cfg.activation == "gelu":
        return "gpt2"
    if cfg.pos == "rope" and cfg.norm == "rmsnorm" and cfg.activation == "swiglu":
        return "llama"
    raise PsyDuckError(refusal(cfg, GGUF_LABEL, GGUF_EXPORTS))


def llama_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face half-split rotary rows -> llama.cpp's adjacent pairs (convert_hf_to_gguf.py's permute).

    Within each head, row j of the first half and row j of the second half become rows 2j and 2j+1.
    Works for weights (rows, C) and biases (rows,).
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(logical: dict[str, torch.Tensor], arch: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors exactly as they go into the GGUF file (llama: q and k permuted)."""
    out = {}
    for name, t in logical.items():
        if arch == "llama" and ".attn_q." in name:
            t = llama_permute(t, cfg.n_head)
        elif arch == "llama" and ".attn_k." in name:
            t = llama_permute(t, cfg.kv_heads)
        out[name] = t.contiguous()
    return out


def gguf_vocab(tokenizer_json: str, n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) for tokenizer.ggml.*: every id below n_vocab gets an entry."""
    import gguf

    data = json.loads(tokenizer_json)
    model = data["model"]
    tokens: list[str | None] = [None] * n_vocab
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    for text, i in model["vocab"].items():
        if i < n_vocab:
            tokens[i], types[i] = text, int(gguf.TokenType.NORMAL)
    for added in data.get("added_tokens", []):
        i = added["id"]
        if i < n_vocab:
            tokens[i] = added["content"]
            types[i] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    names = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]  # ids no token uses
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return names, types, merges


def export_gguf(run: str | Path, out: str | Path, checkpoint: str | None = None) -> Path:
    """Write run `run` as one GGUF file (float32) in llama.cpp's layout for gpt2 or llama."""
    try:
        import gguf
    except ModuleNotFoundError:
        raise PsyDuckError("GGUF export needs the gguf package; install it with `pip install gguf`") from None

    from psyduck.runs import load_run

    run, out = Path(run), Path(out)
    model, tok = load_run(run, checkpoint=checkpoint)
    cfg: ModelConfig = model.config
    arch = gguf_arch(cfg)
    tensors = gguf_tensors(logical_tensors(model, arch, GGUF_LABEL), arch, cfg)
    tokens, types, merges = gguf_vocab(hf_tokenizer_json(run, tok), cfg.vocab_size)
    if out.is_dir():
        raise PsyDuckError(f"--out {out} is a folder; give the GGUF file's name, e.g. {out / (run.name + '.gguf')}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        _write_metadata(w, gguf, cfg, arch, run.name)
        _write_vocab(w, tok, tokens, types, merges)
        for name, t in tensors.items():
            w.add_tensor(name, t.numpy())
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    return out


def _write_metadata(w: Any, gguf: Any, cfg: ModelConfig, arch: str, name: str) -> None:  # gguf is an optional import
    """The architecture's hyperparameters, under the keys llama.cpp reads for `arch`."""
    w.add_name(name)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.ffn_hidden)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    if arch == "gpt2":
        w.add_layer_norm_eps(cfg.norm_eps)
    else:
        w.add_head_count_kv(cfg.kv_heads)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_rope_dimension_count(cfg.head_size)
        w.add_vocab_size(cfg.vocab_size)


def _write_vocab(w: Any, tok: Tokenizer, tokens: list[str], types: list[int], merges: list[str]) -> None:
    """The byte-level BPE vocabulary and its end-of-text token."""
    w.add_tokenizer_model("gpt2")  # byte-level BPE
    # the pre-tokenizer's split regex: GPT-2's for a trained BPE, cl100k's (= llama.cpp's llama-bpe) for cl100k
    w.add_tokenizer_pre("llama-bpe" if tok.name == CL100K else "gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.eot_id)
    w.add_eos_token_id(tok.eot_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
