"""The Hugging Face export for architectures no stock `transformers` class computes: PsyDuck's own code.

The folder gets `configuration_psyduck.py` and `modeling_psyduck.py` (psyduck/interop/remote/,
self-contained: they import only torch and `transformers`), and config.json's `auto_map` points
`AutoConfig` and `AutoModelForCausalLM` at them, so

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

builds PsyDuck's exact model. Its modules carry PsyDuck's names, so the weights are the state
dict as it is (a tied output layer is stored once, as the token embedding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from psyduck.config import ModelConfig

REMOTE_DIR = Path(__file__).with_name("remote")
REMOTE_FILES = ("configuration_psyduck.py", "modeling_psyduck.py")


def remote_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """PsyDuck's state dict in float32, the tied output matrix once (safetensors stores no aliases)."""
    sd = {k: v.detach().to(torch.float32).cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def remote_config(cfg: ModelConfig, eot_id: int) -> dict[str, Any]:
    """config.json for modeling_psyduck.py: PsyDuck's fields, resolved, plus `auto_map`."""
    return {
        "architectures": ["PsyDuckForCausalLM"],
        "model_type": "psyduck",
        "auto_map": {
            "AutoConfig": "configuration_psyduck.PsyDuckConfig",
            "AutoModelForCausalLM": "modeling_psyduck.PsyDuckForCausalLM",
        },
        "vocab_size": cfg.vocab_size,
        "block_size": cfg.block_size,
        "d_model": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_kv_head": cfg.kv_heads,
        "d_ff": cfg.ffn_hidden,
        "pos": cfg.pos,
        "norm": cfg.norm,
        "activation": cfg.activation,
        "bias": cfg.bias,
        "head_bias": cfg.head_bias,
        "rope_theta": cfg.rope_theta,
        "norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": eot_id,
        "torch_dtype": "float32",
        "use_cache": False,  # the model recomputes the sequence each step (no KV cache)
    }


def remote_files() -> dict[str, str]:
    """The two Python files the folder carries, by name."""
    return {name: (REMOTE_DIR / name).read_text(encoding="utf-8") for name in REMOTE_FILES}
