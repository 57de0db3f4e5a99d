"""Model and optimizer state as flat tensors + JSON: what a checkpoint's safetensors files hold.

safetensors stores a flat name -> tensor map and nothing else (no pickle, so no code runs on
load). A model's `state_dict()` is already such a map, once the prefixes that wrappers add
(`torch.compile`'s `_orig_mod.`, DDP's `module.`) are stripped; a tied output matrix is stored
once, as the token embedding. An optimizer's state is nested (per parameter: tensors such as
AdamW's moments, plus plain numbers), so it is split into tensors named `opt.<param id>.<name>`
and a JSON part (the param groups and the numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from psyduck.errors import PsyDuckError


def short_error(e: BaseException) -> str:
    """The first line of an exception's message (or its type), at most 200 characters."""
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrappers' prefixes (torch.compile's `_orig_mod.`, DDP's `module.`) so any model loads it."""
    out = {}
    for k, v in state.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k.replace("._orig_mod.", ".")] = v
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as a flat dict for safetensors (a tied output matrix is stored once)."""
    state = clean_state_dict(model.state_dict())
    cfg = getattr(unwrap(model), "config", None)
    if cfg is not None and cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load model.safetensors into `model`, with clear errors for damaged or mismatched files."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PsyDuckError(
            f"checkpoint {path} is damaged or truncated ({short_error(e)}); resume from an earlier checkpoint"
        ) from None
    model = unwrap(model)
    state = clean_state_dict(state)
    if getattr(model.config, "tie_embeddings", False) and "tok_emb.weight" in state:
        state["lm_head.weight"] = state["tok_emb.weight"]
    mismatch = describe_mismatch(state, model.state_dict())
    if mismatch:
        raise PsyDuckError(f"checkpoint {path} does not fit this model's config ({mismatch}); check config.json")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PsyDuckError(f"checkpoint {path} does not fit this model's config ({short_error(e)}); check config.json") from None


def describe_mismatch(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], shown: int = 3) -> str:
    """The keys and shapes where a checkpoint and a model differ, in words ('' when they agree):
    'tok_emb.weight is (512, 64) in the checkpoint but (512, 128) in the model; missing: ...'."""
    parts = []
    shapes = [  # in the model's order: the embedding first, as one reads the model
        f"{k} is {tuple(saved[k].shape)} in the checkpoint but {tuple(v.shape)} in the model"
        for k, v in expected.items() if k in saved and saved[k].shape != v.shape
    ]
    for label, items in (("", shapes), ("missing from the checkpoint: ", [k for k in expected if k not in saved]),
                         ("not in the model: ", [k for k in saved if k not in expected])):
        if items:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            parts.append(label + ", ".join(items[:shown]) + more)
    return "; ".join(parts)


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors named opt.<param id>.<name>, JSON-able rest) of an optimizer's state."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{name}"] = val.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore what `optimizer_to_flat` split apart into `opt`."""
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except ValueError as e:  # another optimizer's groups (train.optimizer changed on resume)
        raise PsyDuckError(
            f"the checkpoint's optimizer state does not fit this optimizer ({short_error(e)}); "
            "resume with the train.optimizer the run was trained with (its config.json)"
        ) from None
