"""What the export tests share: small random run folders, and the architectures of every preset."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from psyduck.config import Config, DataConfig, ModelConfig
from psyduck.io import write_json_atomic
from psyduck.model import GPT
from psyduck.presets import presets
from psyduck.runs import save_checkpoint
from psyduck.tokenizer import Tokenizer

BLOCK = 32
ARCH_FIELDS = ("pos", "norm", "activation", "tie_embeddings", "bias", "head_bias", "n_kv_head", "rope_theta", "norm_eps")
# architectures worth exporting, by the class / llama.cpp architecture they map to (the name's first word)
ARCHS: dict[str, dict[str, object]] = {
    "gpt2-tied": {"pos": "learned", "norm": "layernorm", "activation": "gelu", "tie_embeddings": True, "bias": True},
    "gpt2-untied-gqa-nobias": {"pos": "learned", "norm": "layernorm", "activation": "gelu", "tie_embeddings": False,
                               "bias": False, "n_kv_head": 2},
    "gpt2-sinusoidal": {"pos": "sinusoidal", "norm": "layernorm", "activation": "gelu", "tie_embeddings": True, "bias": True},
    "gpt2-seed-math": {"pos": "sinusoidal", "norm": "layernorm", "activation": "relu", "tie_embeddings": True, "bias": True},
    "llama-mha": {"pos": "rope", "norm": "rmsnorm", "activation": "swiglu", "tie_embeddings": False, "bias": False,
                  "rope_theta": 500.0, "norm_eps": 1e-6},
    "llama-gqa-bias": {"pos": "rope", "norm": "rmsnorm", "activation": "swiglu", "tie_embeddings": True, "bias": True,
                       "n_kv_head": 2},
    "arcee-cpu-small": {"pos": "rope", "norm": "rmsnorm", "activation": "gelu", "tie_embeddings": True, "bias": False},
    "arcee-relu2-tied": {"pos": "rope", "norm": "rmsnorm", "activation": "relu2", "tie_embeddings": True, "bias": False},
    "arcee-relu2-untied-gqa": {"pos": "rope", "norm": "rmsnorm", "activation": "relu2", "tie_embeddings": False,
                               "bias": False, "n_kv_head": 2, "rope_theta": 500.0, "norm_eps": 1e-6},
    "arcee-relu2-bias": {"pos": "rope", "norm": "rmsnorm", "activation": "relu2", "tie_embeddings": False, "bias": True},
    # no stock class: PsyDuck's own code in the folder
    "psyduck-seed": {"pos": "sinusoidal", "norm": "layernorm", "activation": "relu", "tie_embeddings": False, "bias": True,
                     "head_bias": True},
    "psyduck-rope-layernorm": {"pos": "rope", "norm": "layernorm", "activation": "gelu", "tie_embeddings": True,
                               "bias": True, "n_kv_head": 2},
    "psyduck-learned-layernorm-relu2": {"pos": "learned", "norm": "layernorm", "activation": "relu2",
                                        "tie_embeddings": True, "bias": True},
    "psyduck-learned-rmsnorm-swiglu": {"pos": "learned", "norm": "rmsnorm", "activation": "swiglu",
                                       "tie_embeddings": False, "bias": False},
    "psyduck-sinusoidal-rmsnorm-headbias": {"pos": "sinusoidal", "norm": "rmsnorm", "activation": "gelu",
                                            "tie_embeddings": False, "bias": False, "head_bias": True},
}
# every preset's architecture, at test size
PRESET_ARCHS = {name: {k: getattr(cfg.model, k) for k in ARCH_FIELDS} for name, cfg in presets.items()}


def make_run(root: Path, tok: Tokenizer, seed: int = 0, **model: object) -> GPT:
    """A run folder holding a small random model whose outputs are far from uniform."""
    cfg = ModelConfig(**{"vocab_size": tok.vocab_size, "block_size": BLOCK, "d_model": 32, "n_layer": 2, "n_head": 4,
                         "dropout": 0.0, **model})
    torch.manual_seed(seed)
    m = GPT(cfg)
    with torch.no_grad():  # bigger, non-trivial weights: norms and biases away from 1 and 0
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" in name or name.endswith("bias") else 0.2))
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "config.json", Config(model=cfg, data=DataConfig(tokenizer=tok.name)).to_dict())
    tok.save(root)
    save_checkpoint(root, 0, m, None, {})
    return m.eval()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """`psyduck ARGS` in this process (a traceback would fail the test), shaped as run_cli's result."""
    from psyduck.cli import main

    capsys.readouterr()
    rc = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), rc, captured.out, captured.err)
