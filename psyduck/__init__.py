"""PsyDuck: build, train and sample a small GPT from scratch.

    from psyduck import GPT, load_run, presets, train
    from psyduck.generate import GenerationParams, generate, stream
    model = GPT(presets["seed-60m"].model)
    logits, loss = model(idx, targets)
    model, tokenizer = load_run("runs/demo")
    out = generate(model, idx, GenerationParams(max_new_tokens=100, temperature=0.7, top_k=50))

Names that need PyTorch are imported on first use, so `psyduck prepare` and `psyduck config` start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from psyduck.config import Config, DataConfig, ModelConfig, TrainConfig
from psyduck.errors import PsyDuckError

# After this line `psyduck.presets` is the dict of presets, not the module psyduck/presets.py (which
# `from psyduck.presets import get_preset` still reaches): the README's `from psyduck import presets`.
from psyduck.presets import get_preset, presets

__version__ = "0.1.0"

_LAZY = {
    "GPT": "psyduck.model",
    "GenerationParams": "psyduck.generate",
    "load_run": "psyduck.runs",
    "train": "psyduck.train",
    "Trainer": "psyduck.train",
    "prepare": "psyduck.data.prepare",
    "evaluate": "psyduck.evaluate",
    "TokenData": "psyduck.data.loader",
    "load_tokenizer": "psyduck.tokenizer",
}

__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "PsyDuckError", "get_preset", "presets", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        # `train` is the package psyduck.train itself (callable as its `train` function): importing it
        # binds that package here, whichever way it was first imported, so we hand out the same object
        value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'psyduck' has no attribute {name!r}")
