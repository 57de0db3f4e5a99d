"""What a checkpoint must hold for a resumed run to take bit-for-bit the same steps as one that never
stopped: the weights, AdamW's moments, the step, and every random state the run draws from.

The random states, captured and restored here and nowhere else:
- python's `random` and numpy's global generator (JSON, in state.json);
- torch's CPU generator (dropout masks, initialisation), the CUDA generator of this device, and the
  batch sampler's own `torch.Generator` (tensors, in optimizer.safetensors as `rng.*`).
Runs made by `import-hf` have no random states: restoring one keeps the fresh generators.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psyduck.runs import read_state, save_checkpoint
from psyduck.state_dicts import load_weights, optimizer_from_flat


def capture_rng(batch_gen: torch.Generator, device: torch.device) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Every random state now: (the JSON part for state.json, the tensors for the safetensors file)."""
    np_state = np.random.get_state()
    json_part = {
        "rng_python": _jsonable(random.getstate()),
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    tensors = {"rng.torch": torch.get_rng_state(), "rng.batch": batch_gen.get_state()}
    if torch.cuda.is_available() and device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return json_part, tensors


def restore_rng(
    state: dict[str, Any], tensors: dict[str, torch.Tensor], batch_gen: torch.Generator, device: torch.device
) -> None:
    """Put back the random states `capture_rng` saved (those present: imports have none)."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.batch" in tensors:
        batch_gen.set_state(tensors["rng.batch"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    if state.get("rng_python"):
        random.setstate(_tuplify(state["rng_python"]))
    if state.get("rng_numpy"):
        n = state["rng_numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def save_training_checkpoint(
    out: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    batch_gen: torch.Generator,
    device: torch.device,
    keep: int,
) -> Path:
    """Write checkpoint `step` of the run in `out`: weights, optimizer, `info` and the random states."""
    rng_json, rng_tensors = capture_rng(batch_gen, device)
    return save_checkpoint(out, step, model, optimizer, {**info, **rng_json}, rng_tensors, keep=keep)


def load_training_checkpoint(
    ckpt: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_gen: torch.Generator,
    device: torch.device,
) -> dict[str, Any]:
    """Load a checkpoint into the model, the optimizer and the generators; returns its state.json
    (step, tokens_seen, best_val, ...)."""
    from safetensors.torch import load_file

    state = read_state(ckpt)
    load_weights(model, ckpt / "model.safetensors")
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    if state.get("optimizer"):
        optimizer_from_flat(optimizer, tensors, state["optimizer"])
    restore_rng(state, tensors, batch_gen, device)
    return state


def _jsonable(obj: Any) -> Any:
    """python's random state is nested tuples; JSON has lists."""
    if isinstance(obj, tuple):
        return [_jsonable(o) for o in obj]
    return obj


def _tuplify(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_tuplify(o) for o in obj)
    return obj
