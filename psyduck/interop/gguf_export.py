"""A run as one GGUF file, the format of llama.cpp and its family (ollama, LM Studio, ...).

    psyduck export runs/demo --format gguf --out exports/demo.gguf

    psyduck export runs/demo --format gguf --quant q8_0 --out exports/demo.gguf   # f32 | f16 | q8_0

Exact math or nothing, as for Hugging Face (see hf_export.py):

    positions            norm       FFN              llama.cpp architecture
    learned, sinusoidal  layernorm  gelu             gpt2
    rope                 rmsnorm    swiglu           llama
    rope                 rmsnorm    relu2, no bias   arcee (down(relu(up(x))²), no gate; llama otherwise)

No llama.cpp architecture computes rope + rmsnorm + a non-gated GELU or ReLU FFN: its other
non-gated rope architectures are nemotron (LayerNorm with a +1 offset, ReLU²), starcoder2
(LayerNorm) and phi2 / gpt-j (parallel attention and FFN). Those, the seed's ReLU, and arcee with
biases (llama.cpp's arcee has no bias tensors) are refused with the nearest exportable settings
named; `--format hf` exports every model.

Rotary embeddings: PsyDuck (like `transformers`) rotates (i, i + hs/2) pairs; llama.cpp's llama and
arcee rotate adjacent pairs instead, so the q/k rows are permuted exactly as llama.cpp's
convert_hf_to_gguf.py (`LlamaModel.permute`, which its ArceeModel inherits) does for a Hugging Face
Llama. Tensor types (f32, f16, q8_0): gguf_quant.py.
`tokenizer.chat_template` holds the run's chat template in Jinja (`ChatTemplate.jinja`, what llama.cpp's
chat applies): the fine-tuned run's role markers, or for a base model the plain "User: ..." one that
`psyduck serve` and `psyduck chat` use too.
Only this writer needs the `gguf` package, imported when it runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from psyduck.chat import load_template
from psyduck.config import ModelConfig
from psyduck.errors import PsyDuckError
from psyduck.interop import QUANTS
from psyduck.interop.gguf_quant import (
    encode_tensor,
    file_type,
    next_token_agreement,
    tensor_type,
)
from psyduck.interop.hf_tokenizer import hf_tokenizer_json
from psyduck.interop.layout import logical_tensors
from psyduck.interop.loading import claim_output, load_for_export, writing
from psyduck.io import atomic_path
from psyduck.model import GPT
from psyduck.tokenizer import CL100K, Tokenizer

GGUF_LABEL = "GGUF (llama.cpp)"
# llama.cpp architecture -> the settings it computes exactly, for rope models and for the others
# (positions are kept, so a model is only ever told to change its norm, FFN or biases)
GGUF_ARCHS: dict[bool, dict[str, dict[str, object]]] = {
    False: {"gpt2": {"norm": "layernorm", "activation": "gelu"}},
    True: {
        "arcee": {"norm": "rmsnorm", "activation": "relu2", "bias": False},
        "llama": {"norm": "rmsnorm", "activation": "swiglu"},
    },
}
PERMUTED_ROPE = ("llama", "arcee")  # rotate adjacent pairs: q/k rows permuted (llama_permute)


def gguf_arch(cfg: ModelConfig) -> str:
    """"gpt2", "llama" or "arcee": the llama.cpp architecture that computes this model exactly.

    Refused otherwise, naming the nearest exportable settings: the architectures for the model's
    positions (rope: arcee, llama; learned or sinusoidal: gpt2), fewest changes first.
    """
    candidates = GGUF_ARCHS[cfg.pos == "rope"]
    changes = {
        arch: [f"model.{k}={str(v).lower()}" for k, v in wanted.items() if getattr(cfg, k) != v]
        for arch, wanted in candidates.items()
    }
    for arch, needed in changes.items():
        if not needed:
            return arch
    nearest = " or ".join(f"{' '.join(c)} ({arch})" for arch, c in sorted(changes.items(), key=lambda kv: len(kv[1])))
    bias = ", bias=true" if changes.get("arcee") == ["model.bias=false"] else ""  # arcee's one missing piece
    raise PsyDuckError(
        f"cannot export a model with pos={cfg.pos}, norm={cfg.norm}, activation={cfg.activation}{bias} to {GGUF_LABEL}: "
        f"no llama.cpp architecture computes it exactly; nearest exportable: train with {nearest}, "
        "or export this model with --format hf"
    )


def llama_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face half-split rotary rows -> llama.cpp's adjacent pairs (convert_hf_to_gguf.py's permute).

    Within each head, row j of the first half and row j of the second half become rows 2j and 2j+1.
    Works for weights (rows, C) and biases (rows,).
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(logical: dict[str, torch.Tensor], arch: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors exactly as they go into the GGUF file (llama, arcee: q and k permuted)."""
    out = {}
    for name, t in logical.items():
        if arch in PERMUTED_ROPE and ".attn_q." in name:
            t = llama_permute(t, cfg.n_head)
        elif arch in PERMUTED_ROPE and ".attn_k." in name:
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


def export_gguf(
    run: str | Path, out: str | Path, checkpoint: str | None = None, quant: str = "f32", force: bool = False,
    log: Callable[[str], None] | None = None, shown_as: Path | None = None,
) -> Path:
    """Write run `run` as one GGUF file in llama.cpp's layout for gpt2, llama or arcee, its matrices as `quant`.

    `log` (when given) receives one line: the file's size and, for f16 / q8_0, the measured
    next-token agreement with float32; `shown_as` is the file's name there (default `out`), for a
    file written inside a folder that is renamed into place afterwards.
    """
    try:
        import gguf
    except ModuleNotFoundError:
        raise PsyDuckError("GGUF export needs the gguf package; install it with `pip install gguf`") from None
    if quant not in QUANTS:
        raise PsyDuckError(f"unknown --quant {quant!r}; choose one of: {', '.join(QUANTS)}")
    run, out = Path(run), Path(out)
    model, tok = load_for_export(run, checkpoint)
    cfg: ModelConfig = model.config
    arch = gguf_arch(cfg)
    tensors = gguf_tensors(logical_tensors(model, arch, GGUF_LABEL), arch, cfg)
    tokens, types, merges = gguf_vocab(hf_tokenizer_json(run, tok), cfg.vocab_size)
    chat_template = load_template(run).jinja  # a corrupt chat_template.json is refused before anything is written
    claim_output(out, force, "file")
    with writing(out), atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        _write_metadata(w, gguf, cfg, arch, run.name, quant)
        _write_vocab(w, tok, tokens, types, merges)
        w.add_chat_template(chat_template)
        for name, t in tensors.items():
            data, qtype = encode_tensor(t, tensor_type(name, tuple(t.shape), quant), gguf)
            w.add_tensor(name, data, raw_dtype=qtype)
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    if log is not None:
        log(_report(out, shown_as or out, model, tok, quant, gguf))
    return out


def _report(out: Path, shown_as: Path, model: GPT, tok: Tokenizer, quant: str, gguf: Any) -> str:
    """"NAME: 12.3 MB (q8_0); next-token agreement with float32 99.6% of 256 positions"."""
    line = f"{shown_as}: {out.stat().st_size / 1e6:.1f} MB ({quant})"
    if quant == "f32":
        return line + "; float32, the weights exactly"
    agree, n = next_token_agreement(model, tok, quant, gguf)
    return line + f"; next-token agreement with float32: {agree:.1%} of {n} positions of a sample text"


def _write_metadata(w: Any, gguf: Any, cfg: ModelConfig, arch: str, name: str, quant: str) -> None:  # gguf: optional
    """The architecture's hyperparameters, under the keys llama.cpp reads for `arch`."""
    w.add_name(name)
    w.add_file_type(file_type(quant, gguf))
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.ffn_hidden)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    if arch == "gpt2":
        w.add_layer_norm_eps(cfg.norm_eps)
    else:  # llama and arcee read the same keys (under their own prefix)
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
