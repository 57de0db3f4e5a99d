"""A run as a Hugging Face `transformers` folder: `AutoModelForCausalLM.from_pretrained` loads it.

    psyduck export runs/demo --format hf --out exports/demo-hf

Exact math, always: each PsyDuck architecture goes to a stock class where one computes the *same
function* (the parity tests compare logits within 1e-4 and greedy generations token for token):

    positions            norm       FFN                transformers
    learned, sinusoidal  layernorm  gelu, relu         GPT2LMHeadModel
    rope                 rmsnorm    swiglu             LlamaForCausalLM
    rope                 rmsnorm    relu2, gelu, relu  ArceeForCausalLM (up -> hidden_act -> down, no gate)
    anything else, or a non-zero output bias           PsyDuckForCausalLM (trust_remote_code=True)

The last row is PsyDuck's own code shipped in the folder (hf_remote.py), so every model exports,
the seed's included. Rotary embeddings: PsyDuck rotates (i, i + hs/2) pairs, the half-split layout
`transformers` uses (rotate_half), so Llama's q/k weights are copied as they are. The folder is
written without `transformers` (config.json by hand), in float32, into a temporary folder renamed
into place when complete; the model card (model_card.py) goes with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from psyduck.config import ModelConfig
from psyduck.interop.gpt2_names import hf_name
from psyduck.interop.hf_remote import remote_config, remote_files, remote_tensors
from psyduck.interop.hf_tokenizer import hf_tokenizer_json
from psyduck.interop.llama_names import hf_name as llama_hf_name
from psyduck.interop.layout import logical_tensors, output_bias
from psyduck.interop.loading import claim_output, load_for_export, writing
from psyduck.interop.model_card import model_card
from psyduck.io import atomic_folder, write_json_atomic, write_text_atomic
from psyduck.tokenizer import EOT

HF_LABEL = "Hugging Face transformers"
HF_ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "arcee": "ArceeForCausalLM", "psyduck": "PsyDuckForCausalLM",
}
# model.activation -> Llama's / Arcee's hidden_act (transformers' ACT2FN names); swiglu is Llama's silu gate
HIDDEN_ACT = {"swiglu": "silu", "gelu": "gelu_pytorch_tanh", "relu": "relu", "relu2": "relu2"}


def hf_family(model: torch.nn.Module) -> str:
    """"gpt2", "llama" or "arcee": the stock model_type that computes this model exactly, else "psyduck".

    Arcee's MLP is down(act(up(x))) with act any of transformers' ACT2FN: "relu2" there is
    relu(x)², PsyDuck's ReLUSquared; its RMSNorm, rotate_half RoPE and attention are Llama's.

    An output bias that is exactly zero (untrained, imported) is dropped; a non-zero one needs PsyDuck's code.
    """
    cfg: ModelConfig = model.config
    head_bias = output_bias(model.state_dict(), cfg)
    if head_bias is not None and bool(head_bias.any()):
        return "psyduck"
    if cfg.pos in ("learned", "sinusoidal") and cfg.norm == "layernorm" and cfg.activation in ("gelu", "relu"):
        return "gpt2"
    if cfg.pos == "rope" and cfg.norm == "rmsnorm":
        return "llama" if cfg.activation == "swiglu" else "arcee"
    return "psyduck"


def hf_tensors(logical: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Rename (and for GPT-2's Conv1D, transpose) the llama.cpp-named tensors for `transformers`."""
    out = {}
    for name, t in logical.items():
        if family == "gpt2":
            full, transpose = hf_name(name)
            out[full] = (t.t() if transpose else t).contiguous()
        else:
            out[llama_hf_name(name)] = t.contiguous()
    return out


def hf_config(cfg: ModelConfig, family: str, eot_id: int) -> dict[str, Any]:
    """config.json for `family`, written by hand so exporting does not need `transformers`."""
    if family == "psyduck":
        return remote_config(cfg, eot_id)
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
        "hidden_act": HIDDEN_ACT[cfg.activation],
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


def export_hf(
    run: str | Path, out: str | Path, checkpoint: str | None = None, force: bool = False, repo: str | None = None,
) -> Path:
    """Write run `run` as a `transformers` folder: config, weights, tokenizer, model card (and code if needed).

    `repo` is the name the card loads the model by (the Hub repository; default the folder's name).
    """
    from safetensors.torch import save_file

    run, out = Path(run), Path(out)
    model, tok = load_for_export(run, checkpoint)
    cfg: ModelConfig = model.config
    family = hf_family(model)
    if family == "psyduck":
        tensors = remote_tensors(model)
    else:
        tensors = hf_tensors(logical_tensors(model, family, HF_LABEL), family)
    tokenizer_json = hf_tokenizer_json(run, tok)
    claim_output(out, force, "folder")
    with writing(out), atomic_folder(out) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json_atomic(tmp / "config.json", hf_config(cfg, family, tok.eot_id))
        write_json_atomic(
            tmp / "generation_config.json",
            {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id, "pad_token_id": tok.eot_id,
             **({"use_cache": False} if family == "psyduck" else {})},
        )
        _write_tokenizer(tmp, tokenizer_json, cfg.block_size)
        if family == "psyduck":
            for name, text in remote_files().items():
                write_text_atomic(tmp / name, text)
        card = model_card(run, model, tok, HF_ARCHITECTURES[family], remote_code=family == "psyduck", repo=repo or out.name)
        write_text_atomic(tmp / "README.md", card.text)
        for name, path in card.files.items():
            (tmp / name).write_bytes(path.read_bytes())
    return out


def _write_tokenizer(folder: Path, tokenizer_json: str, block_size: int) -> None:
    """tokenizer.json and its configs; end-of-text doubles as the padding token (batched tokenization)."""
    write_text_atomic(folder / "tokenizer.json", tokenizer_json)
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    write_json_atomic(folder / "special_tokens_map.json", special)
    write_json_atomic(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "padding_side": "left",  # generation continues the right end of every row
            "model_max_length": block_size,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,  # decode must give back the exact text
        },
    )
