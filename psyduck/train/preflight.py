"""What is settled before a run starts: where it starts from, and whether it can start at all.

Everything here runs before the model is built, so a mistake costs one line and no work:
- `--out` must be a folder (or a path where one can be made);
- `--resume` needs a run to continue: the run's saved config is the base, and whatever the caller
  changed on top of it is listed in one line (`config_changes`);
- every checkpoint damaged: refuse, naming them, unless asked to start over
  (`--resume-from-scratch`), which moves the old history aside instead of deleting it;
- `--init-from` must name a run folder;
- the model, its gradients and AdamW's two moments must fit in the device's free memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from psyduck import hardware
from psyduck.config import Config
from psyduck.data.epochs import EpochOrder
from psyduck.data.loader import TokenData
from psyduck.errors import PsyDuckError
from psyduck.runs import RunFolder
from psyduck.tokenizer import Tokenizer, load_tokenizer

Log = Callable[[str], None]

# Filled in by the trainer from the data, so a difference here is no change the user made.
FILLED_IN = ("model.vocab_size", "data.tokenizer")
# Beside the checkpoints, the history that a start from scratch sets aside with them.
HISTORY = ("metrics.jsonl", "samples.txt", "loss_curve.png")


def check_out(out: Path) -> None:
    """Refuse an `--out` that is an existing file."""
    if out.exists() and not out.is_dir():
        raise PsyDuckError(f"--out {out} is a file, not a folder; name a folder for the run")


def resume_config(run: RunFolder) -> Config:
    """The saved config of the run to continue; one line when there is no run there."""
    problem = run.problem()
    if problem is not None:
        raise PsyDuckError(f"nothing to resume: {problem}; start a new run without --resume")
    return run.config()


def check_init_from(path: Path) -> None:
    """Refuse an `--init-from` that is no run folder (before its tokenizer is looked for)."""
    problem = RunFolder(path).problem()
    if problem is not None:
        raise PsyDuckError(f"--init-from: {problem}; name a run folder written by `psyduck train`")


def config_changes(saved: Config, cfg: Config) -> list[str]:
    """'train.lr 0.0006 -> 0.001' for each key where `cfg` differs from the run's saved config."""
    old, new = _flat(saved.to_dict()), _flat(cfg.to_dict())
    return [f"{k} {old[k]} -> {new[k]}" for k in new if k not in FILLED_IN and old.get(k) != new[k]]


def preset_conflicts(saved: Config, preset: Config) -> str:
    """'train.lr: saved 0.0006, preset 0.0003; ...' for the model and train keys where a preset
    differs from a run's saved config ('' when it agrees); data keys name this run's data, not the recipe."""
    old, new = _flat(saved.to_dict()), _flat(preset.to_dict())
    keys = [k for k in new if not k.startswith("data.") and k not in FILLED_IN and old.get(k) != new[k]]
    shown = "; ".join(f"{k}: saved {old.get(k)}, preset {new[k]}" for k in keys[:3])
    return shown + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in d.items() for key, value in values.items()}


def starting_point(
    run: RunFolder, cfg: Config | None, saved: Config | None, from_scratch: bool, log: Log, write: bool = True
) -> tuple[Config, Path | None]:
    """The config to train and the checkpoint to resume from (None: start at step 0).

    `saved` is the run's own config when resuming (`resume_config`); a `cfg` given too is applied
    as it is, and its differences from the saved one are listed in one line.
    """
    if saved is None:
        if cfg is None:
            raise PsyDuckError(f"nothing to resume in {run.path} (no config.json); start a run with --preset")
        if run.checkpoints():
            raise PsyDuckError(f"{run.path} already holds a run; pass --resume to continue it or choose another --out")
        return cfg, None
    if cfg is not None and (changes := config_changes(saved, cfg)):
        log(f"changes to the saved config: {', '.join(changes)}")
    return (saved if cfg is None else cfg), starting_checkpoint(run, from_scratch, log, write)


def open_data(cfg: Config, out: Path, resuming: bool, init_from: Path | None) -> tuple[TokenData, Tokenizer]:
    """Open the token shards, check they speak the run's tokenizer (and `init_from`'s), and size
    the vocabulary in `cfg` (the trainer's own copy)."""
    if init_from is not None:
        check_init_from(init_from)
    data = TokenData(cfg.data.path, prepare=cfg.data.prepare_command())  # no data: the command that makes it
    tokenizer = load_tokenizer(Path(cfg.data.path))
    if resuming or (out / "tokenizer.json").exists():
        data.check_tokenizer(load_tokenizer(out))
    if init_from is not None:
        data.check_tokenizer(load_tokenizer(init_from))
    cfg.data.tokenizer = data.tokenizer_name  # what the run speaks, checked when it is loaded
    if resuming or init_from is not None:  # keep a padded embedding (imports)
        cfg.model.vocab_size = max(cfg.model.vocab_size, data.vocab_size)
    else:
        cfg.model.vocab_size = data.vocab_size
    for split in ("train", "val"):
        data.check_fits(split, cfg.model.block_size)
    return data, tokenizer


def epoch_order(cfg: Config, data: Any, fine_tuning: bool) -> EpochOrder | None:
    """train.sampling=shuffle's window order over the train split of `data` (a TokenData; None: random windows)."""
    if cfg.train.sampling != "shuffle":
        return None
    if fine_tuning:
        raise PsyDuckError(
            "train.sampling=shuffle reads token shards; fine-tuning draws its conversations its own way: "
            "use train.sampling=random"
        )
    data.check_fits("train", cfg.model.block_size)
    return EpochOrder(data.num_tokens("train"), cfg.model.block_size, cfg.train.seed)


def starting_checkpoint(run: RunFolder, from_scratch: bool, log: Log, write: bool = True) -> Path | None:
    """The checkpoint a resumed run continues from (None: step 0).

    Damaged checkpoints newer than the one chosen are moved aside, never deleted (the new run
    would otherwise overwrite them step by step). When every one is damaged, the run is refused
    unless `from_scratch`: then the checkpoints and their history are moved aside together.
    Only the process that may `write` (rank 0) moves anything; the others reach the same answer.
    """
    ckpts = run.checkpoints()
    if from_scratch:
        old = [p for p in (run.checkpoints_dir, *(run.path / n for n in HISTORY)) if p.exists()]
        if old and write:
            aside = run.set_aside(old)
            log(f"moved the old checkpoints and metrics of {run.path} aside into {aside}; training anew from step 0")
        return None
    skipped: list[str] = []  # said only once a checkpoint is chosen: a refusal stays one line
    ckpt = run.latest_loadable(skipped.append)
    if ckpt is None and ckpts:
        raise PsyDuckError(
            f"every checkpoint of {run.path} is damaged ({', '.join(c.name for c in ckpts)}); restore one from a "
            "backup, or pass --resume-from-scratch to move them aside and train anew"
        )
    for line in skipped:
        log(line)
    if ckpt is None:
        log(f"{run.path} has no loadable checkpoint yet: starting from step 0")
        return None
    damaged = [c for c in ckpts if c.name > ckpt.name]
    if damaged and write:
        aside = run.set_aside(damaged)
        log(f"moved the damaged {', '.join(c.name for c in damaged)} aside into {aside}")
    return ckpt


def check_model_fits(cfg: Config, device: torch.device) -> None:
    """Refuse a model whose weights, gradients and AdamW moments (16 bytes a parameter in float32)
    do not fit in `device`'s free memory; it is built on the CPU first, so its weights must fit there too."""
    params, weight_bytes = hardware.model_footprint(cfg.model)
    what = f"training {hardware.describe_model(cfg.model, params)} with AdamW"
    fix = "choose a smaller model (model.d_model, model.n_layer, model.vocab_size)"
    hardware.require_memory(weight_bytes + 12 * params, device, what, fix)
    if device.type != "cpu":
        hardware.require_memory(weight_bytes, torch.device("cpu"), f"building {hardware.describe_model(cfg.model, params)}", fix)
