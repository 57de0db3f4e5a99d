"""Other ecosystems' formats: a run as a Hugging Face `transformers` folder, or as one GGUF file.

    psyduck export runs/demo --format hf --out exports/demo-hf       # AutoModelForCausalLM.from_pretrained
    psyduck export runs/demo --format gguf --out exports/demo.gguf   # llama.cpp and its family

Design choices:
- Exact math or nothing. Each PsyDuck architecture maps onto a class that computes the *same function*
  (the parity test compares logits within 1e-4 and greedy generations token for token):

      positions            norm       FFN          transformers        GGUF (llama.cpp)
      learned, sinusoidal  layernorm  gelu, relu   GPT2LMHeadModel     gpt2  (gelu only)
      rope                 rmsnorm    swiglu       LlamaForCausalLM    llama
      rope                 rmsnorm    gelu, relu   ArceeForCausalLM    -

  Anything else (rope + layernorm, learned + rmsnorm, ...) is refused with a one-line PsyDuckError
  naming what does export. Presets: tiny and gpt2-124m -> GPT-2, cpu-small -> Arcee; seed-60m is
  refused (its untied output layer has a bias that no target model has).
- Faithful stand-ins where the target lacks a feature but the function is the same:
  * sinusoidal positions are a fixed table added to the token embeddings, so GPT-2's learned position
    table holding those values computes them exactly (it would become trainable if fine-tuned there);
  * grouped-query attention in GPT-2 (which has none): each key/value head is repeated for its group
    of query heads, which is exactly what PsyDuck's attention does at run time;
  * `bias=false` in GPT-2 (which always has biases): zero biases;
  * an output-layer bias that is exactly zero (an untrained or imported model) is dropped; a non-zero
    one is refused: none of the targets has one.
- Rotary embeddings: PsyDuck rotates (i, i + hs/2) pairs, the half-split layout `transformers` uses
  (rotate_half), so Llama's q/k weights are copied as they are. llama.cpp rotates adjacent pairs
  instead, so GGUF gets the q/k rows permuted exactly as llama.cpp's convert_hf_to_gguf.py
  (`LlamaModel.permute`) does for a Hugging Face Llama.
- One internal layout, two spellings: the weights are first gathered under llama.cpp's tensor names
  in PyTorch's (out, in) layout (`logical_tensors`); the Hugging Face writer renames them (and
  transposes for GPT-2's Conv1D layers), the GGUF writer permutes llama's q/k.
- Tokenizer: a trained BPE's tokenizer.json already *is* a Hugging Face `tokenizers` file and is
  copied; cl100k_base is converted from tiktoken's ranks into the same byte-level BPE form (the
  usual tiktoken -> Hugging Face conversion: GPT-2's byte-to-unicode alphabet, merges recovered from
  the ranks). Note that `transformers` treats the text "<|endoftext|>" as the special token, while
  PsyDuck's own `encode` treats it as plain text.
- float32 everywhere (file type ALL_F32 in GGUF): an export is a copy, quantize downstream.
- `transformers` and `gguf` are only imported here when needed; the Hugging Face folder is written
  without `transformers` (config.json by hand), and only the GGUF writer needs the `gguf` package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from psyduck.config import ModelConfig
from psyduck.errors import PsyDuckError
from psyduck.tokenizer import CL100K, EOT, Tokenizer

FORMATS = ("hf", "gguf")
HF_LABEL = "Hugging Face transformers"
GGUF_LABEL = "GGUF (llama.cpp)"
HF_EXPORTS = (
    "learned or sinusoidal positions + layernorm + gelu/relu (GPT-2), rope + rmsnorm + swiglu (Llama), "
    "rope + rmsnorm + gelu/relu (Arcee), e.g. presets tiny, gpt2-124m, cpu-small"
)
GGUF_EXPORTS = (
    "learned or sinusoidal positions + layernorm + gelu (gpt2), rope + rmsnorm + swiglu (llama), "
    "e.g. presets tiny, gpt2-124m"
)
HF_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "arcee": "ArceeForCausalLM"}


# ---------------------------------------------------------------------------------------------
# Which architecture a model maps onto
# ---------------------------------------------------------------------------------------------

def hf_family(cfg: ModelConfig) -> str:
    """"gpt2", "llama" or "arcee": the `transformers` model_type that computes this model exactly."""
    if cfg.pos in ("learned", "sinusoidal") and cfg.norm == "layernorm" and cfg.activation in ("gelu", "relu"):
        return "gpt2"
    if cfg.pos == "rope" and cfg.norm == "rmsnorm":
        return "llama" if cfg.activation == "swiglu" else "arcee"
    raise PsyDuckError(_refusal(cfg, HF_LABEL, HF_EXPORTS))


def gguf_arch(cfg: ModelConfig) -> str:
    """"gpt2" or "llama": the llama.cpp architecture that computes this model exactly."""
    if cfg.pos in ("learned", "sinusoidal") and cfg.norm == "layernorm" and cfg.activation == "gelu":
        return "gpt2"
    if cfg.pos == "rope" and cfg.norm == "rmsnorm" and cfg.activation == "swiglu":
        return "llama"
    raise PsyDuckError(_refusal(cfg, GGUF_LABEL, GGUF_EXPORTS))


def _refusal(cfg: ModelConfig, label: str, exports: str) -> str:
    return (
        f"cannot export a model with pos={cfg.pos}, norm={cfg.norm}, activation={cfg.activation} to {label}: "
        f"no architecture there computes it exactly; exportable: {exports}"
    )


# ---------------------------------------------------------------------------------------------
# Weights under llama.cpp's names, in PyTorch's (out, in) layout
# ---------------------------------------------------------------------------------------------

def logical_tensors(model: torch.nn.Module, family: str, label: str) -> dict[str, torch.Tensor]:
    """The model's weights under llama.cpp's tensor names (blk.N.attn_qkv.weight, ...), float32.

    `family` is "gpt2" (fused qkv, LayerNorm weights and biases, k/v heads repeated to n_head) or
    "llama"/"arcee" (separate q, k, v in the Hugging Face half-split rotary layout).
    """
    cfg: ModelConfig = model.config
    sd = {k: v.detach().to(torch.float32).cpu() for k, v in model.state_dict().items()}
    gpt2 = family == "gpt2"
    C, hs, H, Hkv = cfg.d_model, cfg.head_size, cfg.n_head, cfg.kv_heads

    def bias(name: str, size: int) -> torch.Tensor | None:
        if name in sd:
            return sd[name]
        return torch.zeros(size) if gpt2 else None  # GPT-2 always has biases: zeros compute the same

    out: dict[str, torch.Tensor] = {"token_embd.weight": sd["tok_emb.weight"]}
    if gpt2:
        if cfg.pos == "learned":
            out["position_embd.weight"] = sd["pos_emb.weight"]
        else:  # the fixed sinusoidal table, held by GPT-2's position embedding
            from psyduck.model import sinusoidal_positions

            out["position_embd.weight"] = sinusoidal_positions(cfg.block_size, C)
    for i in range(cfg.n_layer):
        p, b = f"blocks.{i}.", f"blk.{i}."
        out[b + "attn_norm.weight"] = sd[p + "norm1.weight"]
        out[b + "ffn_norm.weight"] = sd[p + "norm2.weight"]
        if gpt2:
            out[b + "attn_norm.bias"] = bias(p + "norm1.bias", C)
            out[b + "ffn_norm.bias"] = bias(p + "norm2.bias", C)
        qkv_w = sd[p + "attn.qkv.weight"]
        qkv_b = bias(p + "attn.qkv.bias", (H + 2 * Hkv) * hs)
        parts = {"q": (0, H * hs), "k": (H * hs, Hkv * hs), "v": ((H + Hkv) * hs, Hkv * hs)}
        pieces: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for name, (start, size) in parts.items():
            w = qkv_w[start : start + size]
            bb = qkv_b[start : start + size] if qkv_b is not None else None
            if gpt2 and name != "q" and Hkv != H:  # GPT-2 has no GQA: repeat each kv head for its group
                w = w.view(Hkv, hs, C).repeat_interleave(H // Hkv, dim=0).reshape(H * hs, C)
                bb = bb.view(Hkv, hs).repeat_interleave(H // Hkv, dim=0).reshape(H * hs) if bb is not None else None
            pieces[name] = (w, bb)
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
            bb = bias(p + pname + ".bias", sd[p + pname + ".weight"].shape[0])
            if bb is not None:
                out[b + gname + ".bias"] = bb
    out["output_norm.weight"] = sd["norm.weight"]
    if gpt2:
        out["output_norm.bias"] = bias("norm.bias", C)
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
        head_bias = sd.get("lm_head.bias")
        if head_bias is not None and bool(head_bias.any()):
            target = "GPT-2" if gpt2 else family.capitalize()
            raise PsyDuckError(
                f"cannot export to {label}: the output layer has a non-zero bias (model.head_bias=true) "
                f"and {target} has none; export a model trained with model.head_bias=false"
            )
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers
# ---------------------------------------------------------------------------------------------

_GPT2_NAMES = {  # llama.cpp name -> transformers name, and whether Conv1D wants it transposed
    "token_embd": ("transformer.wte", False),
    "position_embd": ("transformer.wpe", False),
    "attn_norm": ("ln_1", False),
    "attn_qkv": ("attn.c_attn", True),
    "attn_output": ("attn.c_proj", True),
    "ffn_norm": ("ln_2", False),
    "ffn_up": ("mlp.c_fc", True),
    "ffn_down": ("mlp.c_proj", True),
    "output_norm": ("transformer.ln_f", False),
    "output": ("lm_head", False),
}
_LLAMA_NAMES = {
    "token_embd": "model.embed_tokens",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "output_norm": "model.norm",
    "output": "lm_head",
}


def hf_tensors(logical: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Rename (and for GPT-2's Conv1D, transpose) the llama.cpp-named tensors for `transformers`."""
    out = {}
    for name, t in logical.items():
        stem, kind = name.rsplit(".", 1)
        layer = None
        if stem.startswith("blk."):
            _, layer, stem = stem.split(".", 2)
        if family == "gpt2":
            hf, transpose = _GPT2_NAMES[stem]
            if transpose and kind == "weight":
                t = t.t()
            prefix = f"transformer.h.{layer}." if layer is not None else ""
        else:
            hf = _LLAMA_NAMES[stem]
            prefix = f"model.layers.{layer}." if layer is not None else ""
        out[f"{prefix}{hf}.{kind}"] = t.contiguous()
    return out


def hf_config(cfg: ModelConfig, family: str, eot_id: int) -> dict[str, Any]:
    """config.json for `family`, written by hand so exporting does not need `transformers`."""
    common = {
        "architectures": [HF_ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if family == "gpt2":
        return {
            **common,
            "n_positions": cfg.block_size,
            "n_ctx": cfg.block_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.ffn_hidden,
            "activation_function": "gelu_new" if cfg.activation == "gelu" else "relu",  # gelu_new: tanh form
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "initializer_range": 0.02,
        }
    return {
        **common,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "hidden_act": {"swiglu": "silu", "gelu": "gelu_pytorch_tanh", "relu": "relu"}[cfg.activation],
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # transformers 5.x
        "rope_scaling": None,
        "attention_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
        "mlp_bias": cfg.bias,
        "initializer_range": 0.02,
    }


def export_hf(run: str | Path, out: str | Path, checkpoint: str | None = None) -> Path:
    """Write run `run` as a `transformers` folder: config.json, model.safetensors, tokenizer files."""
    from safetensors.torch import save_file

    from psyduck.checkpoint import load_run

    run, out = Path(run), Path(out)
    model, tok = load_run(run, checkpoint=checkpoint)
    cfg: ModelConfig = model.config
    family = hf_family(cfg)
    tensors = hf_tensors(logical_tensors(model, family, HF_LABEL), family)
    tokenizer_json = hf_tokenizer_json(run, tok)
    if out.exists() and not out.is_dir():
        raise PsyDuckError(f"--out {out} is a file; choose a folder name for the Hugging Face export")
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", hf_config(cfg, family, tok.eot_id))
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id, "pad_token_id": tok.eot_id},
    )
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "model_max_length": cfg.block_size,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,  # decode must give back the exact text
        },
    )
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Tokenizer: a Hugging Face tokenizer.json for either backend
# ---------------------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE writes tokens in it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def tiktoken_to_hf_json(encoding) -> str:
    """A tiktoken encoding (e.g. cl100k_base) as a Hugging Face byte-level BPE tokenizer.json.

    tiktoken stores only ranks (bytes -> id); BPE merges are recovered from them: a token of rank r
    is the merge of two shorter tokens whose concatenation it is, and merges apply in rank order.
    `ignore_merges` makes a whole pre-token that is in the vocabulary one token, as tiktoken does.
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    ranks: dict[bytes, int] = encoding._mergeable_ranks
    byte_map = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {text(b): r for b, r in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    specials = sorted(encoding._special_tokens.items(), key=lambda kv: kv[1])
    for name, i in specials:
        vocab[name] = i
    bpe = models.BPE(vocab=vocab, merges=[(text(m[3]), text(m[4])) for m in merges], ignore_merges=True)
    hf = HFTokenizer(bpe)
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_onig_pattern(encoding._pat_str)), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in specials])
    return hf.to_str(pretty=True)


def _onig_pattern(pattern: str) -> str:
    """tiktoken's split regex for `tokenizers`' Oniguruma engine.

    tiktoken (Rust fancy-regex) reads `\\p{N}{1,3}+` as a possessive {1,3}; Oniguruma reads the `+` as
    "repeat the {1,3} group", which would keep numbers in one piece ("2024" instead of "202", "4").
    Possessive and greedy agree here (nothing after it can backtrack into a number run).
    """
    return pattern.replace("{1,3}+", "{1,3}")


def hf_tokenizer_json(run: Path, tok: Tokenizer) -> str:
    """The run's tokenizer as a Hugging Face tokenizer.json (text)."""
    if tok.name == CL100K:
        return tiktoken_to_hf_json(tok._encoding)
    return (run / "tokenizer.json").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------

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

    from psyduck.checkpoint import load_run

    run, out = Path(run), Path(out)
    model, tok = load_run(run, checkpoint=checkpoint)
    cfg: ModelConfig = model.config
    arch = gguf_arch(cfg)
    tensors = gguf_tensors(logical_tensors(model, arch, GGUF_LABEL), arch, cfg)
    tokens, types, merges = gguf_vocab(hf_tokenizer_json(run, tok), cfg.vocab_size)
    if out.is_dir():
        raise PsyDuckError(f"--out {out} is a folder; give the GGUF file's name, e.g. {out / (run.name + '.gguf')}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")

    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(run.name)
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
    for name, t in tensors.items():
        w.add_tensor(name, t.numpy())
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    os.replace(tmp, out)
    return out


def export(run: str | Path, fmt: str, out: str | Path | None = None, checkpoint: str | None = None) -> Path:
    """Export a run in `fmt` ("hf" or "gguf"); `out` defaults to exports/<run>-hf or exports/<run>.gguf."""
    run = Path(run)
    if fmt not in FORMATS:
        raise PsyDuckError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if out is None:
        out = Path("exports") / (f"{run.name}-hf" if fmt == "hf" else f"{run.name}.gguf")
    return export_hf(run, out, checkpoint) if fmt == "hf" else export_gguf(run, out, checkpoint)


__all__ = [
    "export", "export_hf", "export_gguf", "hf_family", "gguf_arch", "logical_tensors", "hf_tensors",
    "gguf_tensors", "llama_permute", "tiktoken_to_hf_json", "bytes_to_unicode",
]
