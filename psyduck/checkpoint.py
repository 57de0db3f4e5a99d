"""Saving and loading runs, atomically, without pickle.

A run folder holds everything needed to use or continue a model:

    runs/demo/
      config.json              the full Config (model, data, train)
      tokenizer.json           the tokenizer the model speaks
      metrics.jsonl            one JSON line per evaluation
      loss_curve.png           train and val loss against step and tokens seen
      samples.txt              a text sample at each evaluation
      checkpoints/
        step_000500/
          model.safetensors    the weights
          optimizer.safetensors the optimizer's tensors (AdamW moments), RNG states
          state.json           step, losses, optimizer hyperparameters, sampler position...

A checkpoint is written into a hidden temporary folder and renamed into place only when complete,
so a kill at any moment leaves either the old set of checkpoints or the new one, never half a file
that looks finished. Weights travel as safetensors and metadata as JSON: loading a run someone sent
you never executes code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from psyduck.config import Config, load_config_json
from psyduck.errors import PsyDuckError

CHECKPOINTS = "checkpoints"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file beside `path`, fsync it, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrappers' prefixes (torch.compile's `_orig_mod.`, DDP's `module.`) so any model loads it."""
    out = {}
    for k, v in state.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k.replace("._orig_mod.", ".")] = v
    return out


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as a flat dict for safetensors (a tied output matrix is stored once)."""
    state = clean_state_dict(model.state_dict())
    cfg = getattr(unwrap(model), "config", None)
    if cfg is not None and cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load model.safetensors into `model`, with clear errors for damaged or mismatched files."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PsyDuckError(f"checkpoint {path} is damaged or truncated ({_short(e)}); resume from an earlier checkpoint") from None
    model = unwrap(model)
    if getattr(model.config, "tie_embeddings", False):
        state["lm_head.weight"] = state.get("tok_emb.weight")
    try:
        model.load_state_dict(clean_state_dict(state), strict=True)
    except RuntimeError as e:
        raise PsyDuckError(f"checkpoint {path} does not fit this model's config ({_short(e)}); check config.json") from None


def _short(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


# ---------------------------------------------------------------------------------------------
# Optimizer and RNG state as tensors + JSON
# ---------------------------------------------------------------------------------------------

def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoints/step_NNNNNN atomically, then prune old ones (keeping the best by val loss)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(model_tensors(model), str(tmp / "model.safetensors"))
    tensors = dict(extra_tensors or {})
    meta: dict[str, Any] = {}
    if optimizer is not None:
        opt_tensors, meta = optimizer_to_flat(optimizer)
        tensors.update(opt_tensors)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    write_json_atomic(tmp / "state.json", {**state, "step": step, "optimizer": meta})
    for f in tmp.iterdir():  # make the data durable before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # re-saving the same step (e.g. an interrupt right after a scheduled save)
        old = root / f".old-step_{step:07d}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)  # make the rename itself durable
    prune_checkpoints(root, keep)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (temporary folders of interrupted saves are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / "state.json").exists())


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PsyDuckError(f"checkpoint {ckpt} has a damaged state.json ({_short(e)}); resume from an earlier checkpoint") from None


def prune_checkpoints(root: Path, keep: int) -> None:
    ckpts = list_checkpoints(root.parent)
    best = None
    scored = [(read_state(c).get("val_loss"), c) for c in ckpts]
    scored = [(v, c) for v, c in scored if isinstance(v, (int, float)) and v == v]
    if scored:
        best = min(scored, key=lambda vc: vc[0])[1]
    for c in ckpts[: max(0, len(ckpts) - max(1, keep))]:
        if c != best:
            shutil.rmtree(c, ignore_errors=True)
    for p in root.iterdir():  # leftovers of saves that were killed midway
        if p.name.startswith((".tmp-", ".old-")) and not _pid_alive(p.name.rsplit("-", 1)[-1]):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return int(pid) != os.getpid()
    except (ValueError, OSError):
        return False


def is_loadable(ckpt: Path) -> bool:
    """True when every file of the checkpoint reads back completely."""
    try:
        read_state(ckpt)
        load_file(str(ckpt / "model.safetensors"))
        load_file(str(ckpt / "optimizer.safetensors"))
        return True
    except (PsyDuckError, SafetensorError, OSError, ValueError, RuntimeError):
        return False


def latest_checkpoint(run_dir: str | Path, log=None) -> Path | None:
    """The newest checkpoint that loads; damaged newer ones are reported and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        if is_loadable(ckpt):
            return ckpt
        if log is not None:
            log(f"skipping damaged checkpoint {ckpt}")
    return None


def best_checkpoint(run_dir: str | Path) -> Path | None:
    scored = []
    for c in list_checkpoints(run_dir):
        v = read_state(c).get("val_loss")
        if isinstance(v, (int, float)) and v == v:
            scored.append((v, c))
    return min(scored, key=lambda vc: vc[0])[1] if scored else None


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------

def read_run_config(run_dir: str | Path) -> Config:
    run = Path(run_dir)
    if not run.is_dir():
        raise PsyDuckError(f"run folder not found: {run}; train one with `psyduck train --out {run}`")
    if not (run / "config.json").is_file():
        raise PsyDuckError(f"{run} is not a PsyDuck run (no config.json); point at a folder written by `psyduck train`")
    return load_config_json(run / "config.json")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | Path | None = None):
    """Load a trained run: returns (model in eval mode, tokenizer).

    Picks the newest loadable checkpoint unless `checkpoint` names one ("best" picks the lowest
    val loss).
    """
    from psyduck.model import GPT
    from psyduck.tokenizer import load_tokenizer

    run = Path(run_dir)
    cfg = read_run_config(run)
    tokenizer = load_tokenizer(run)
    if tokenizer.vocab_size > cfg.model.vocab_size or tokenizer.name != cfg.data.tokenizer:
        raise PsyDuckError(
            f"{run}/tokenizer.json is {tokenizer.name} ({tokenizer.vocab_size} tokens) but the model was trained "
            f"with {cfg.data.tokenizer} ({cfg.model.vocab_size} embedding rows); restore the run's own tokenizer.json"
        )
    if checkpoint == "best":
        ckpt = best_checkpoint(run)
    elif checkpoint is not None:
        ckpt = Path(checkpoint)
    else:
        ckpt = list_checkpoints(run)[-1] if list_checkpoints(run) else None
    if ckpt is None:
        raise PsyDuckError(f"{run} has no checkpoint yet; train it first (or wait for the first evaluation)")
    model = GPT(cfg.model)
    load_weights(model, ckpt / "model.safetensors")
    return model.to(device).eval(), tokenizer
