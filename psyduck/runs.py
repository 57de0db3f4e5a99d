"""Run folders: saving checkpoints atomically, and the one place that lists and picks them.

A run folder holds everything needed to use or continue a model:

    runs/demo/
      config.json              the full Config (model, data, train)
      tokenizer.json           the tokenizer the model speaks
      metrics.jsonl            one JSON line per evaluation
      loss_curve.png           train and val loss against step and tokens seen
      samples.txt              a text sample at each evaluation
      source.json              only for imported runs: where the weights came from
      .lock                    while a trainer writes the run: its PID (`RunLock`: one writer at a time)
      set-aside-YYYYmmdd-HHMMSS/  checkpoints and metrics moved aside, never deleted: damaged ones
                               skipped on resume, or a whole history (`--resume-from-scratch`)
      checkpoints/
        step_0000500/
          model.safetensors    the weights
          optimizer.safetensors the optimizer's tensors (AdamW moments), RNG states
          state.json           step, losses, optimizer hyperparameters, sampler position...

A checkpoint is written into a hidden temporary folder and renamed into place only when complete
(`psyduck.io.atomic_folder`), so a kill at any moment leaves either the old set of checkpoints or
the new one. A disk can still lose bytes later, so whoever *uses* a run (`--resume`, `generate`,
`eval`, `serve`, `export`) asks `RunFolder.latest_loadable`: the newest checkpoint whose files all
read back, with one line naming each damaged newer one it skipped. Weights travel as safetensors
and metadata as JSON: loading a run someone sent you never executes code.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from psyduck import hardware
from psyduck.config import Config, load_config_json
from psyduck.errors import PsyDuckError
from psyduck.io import atomic_folder, fsync_folder, write_json_atomic, writer_alive

from psyduck.run_lock import RunLock
from psyduck.state_dicts import load_weights, model_tensors, optimizer_to_flat, short_error

CHECKPOINTS = "checkpoints"
SOURCE = "source.json"  # only in imported runs
Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    """The default voice of `load_run`: one line on stderr, as the CLI speaks."""
    print(f"psyduck: {message}", file=sys.stderr, flush=True)


class RunFolder:
    """One run folder: where its files are, and which of its checkpoints to use.

    Checkpoints are `checkpoints/step_NNNNNNN` folders; "finished" ones have a state.json (folders
    of interrupted saves are hidden temporaries and never listed).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints_dir = self.path / CHECKPOINTS

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- listing and checking -----------------------------------------------------------------

    def problem(self) -> str | None:
        """Why this path holds no run to continue, as words that follow it ("runs/x does not exist");
        None when it is a run folder (it has a config.json)."""
        if not self.path.exists():
            return f"{self.path} does not exist"
        if not self.path.is_dir():
            return f"{self.path} is a file, not a run folder"
        if (self.path / "config.json").is_file():
            return None
        if not any(not p.name.startswith(".") for p in self.path.iterdir()):
            return f"{self.path} is empty"
        return f"{self.path} is not a PsyDuck run (no config.json)"

    def checkpoints(self) -> list[Path]:
        """Finished checkpoint folders, oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(
            p for p in self.checkpoints_dir.iterdir()
            if p.is_dir() and p.name.startswith("step_") and (p / "state.json").exists()
        )

    def latest_loadable(self, log: Log | None = None) -> Path | None:
        """The newest checkpoint whose files all read back; None when there is none.

        Each damaged newer one is reported through `log`, once the choice is known:
        "skipped damaged checkpoint runs/x/checkpoints/step_0000040 (why); using step_0000020".
        """
        skipped: list[tuple[Path, str]] = []
        chosen = None
        for ckpt in reversed(self.checkpoints()):
            problem = checkpoint_problem(ckpt)
            if problem is None:
                chosen = ckpt
                break
            skipped.append((ckpt, problem))
        if log is not None:
            using = f"using {chosen.name}" if chosen is not None else "no loadable checkpoint is left"
            for ckpt, problem in skipped:
                log(f"skipped damaged checkpoint {ckpt} ({problem}); {using}")
        return chosen

    def best(self) -> Path | None:
        """The checkpoint with the lowest recorded val loss (None when none recorded one)."""
        scored = [(v, c) for c in self.checkpoints() if (v := val_loss_of(c)) is not None]
        return min(scored, key=lambda vc: vc[0])[1] if scored else None

    def pick(self, checkpoint: str | Path | None = None, log: Log | None = None) -> Path:
        """The checkpoint to use: a named folder, "best", or by default the newest loadable one."""
        if checkpoint == "best":
            ckpt = self.best()
        elif checkpoint is not None:
            ckpt = Path(checkpoint)
        else:
            ckpt = self.latest_loadable(log)
            if ckpt is None and self.checkpoints():
                raise PsyDuckError(
                    f"every checkpoint of {self.path} is damaged ({', '.join(c.name for c in self.checkpoints())}); "
                    "train the run again or restore a checkpoint from a backup"
                )
        if ckpt is None:
            raise PsyDuckError(f"{self.path} has no checkpoint yet; train it first (or wait for the first evaluation)")
        return ckpt

    # -- writing ------------------------------------------------------------------------------

    def lock(self, log: Log | None = None) -> RunLock:
        """Become the run's one writer (creating the folder if needed); see `RunLock`."""
        return RunLock(self.path, log)

    def set_aside(self, paths: list[Path]) -> Path:
        """Move `paths` (inside the run folder) into a new dated folder, RUN/set-aside-YYYYmmdd-HHMMSS,
        each at the same place relative to the run; returns that folder. Nothing is deleted: a
        damaged checkpoint may still hold what a backup does not."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest, n = self.path / f"set-aside-{stamp}", 1
        while dest.exists():
            n += 1
            dest = self.path / f"set-aside-{stamp}-{n}"
        for p in paths:
            target = dest / p.relative_to(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, target)
        fsync_folder(self.path)
        return dest

    def save_checkpoint(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        state: dict[str, Any],
        extra_tensors: dict[str, torch.Tensor] | None = None,
        keep: int = 2,
    ) -> Path:
        """Write checkpoints/step_NNNNNNN atomically, then prune old ones (keeping the best by val loss)."""
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints_dir / f"step_{step:07d}"
        with atomic_folder(final) as tmp:
            save_file(model_tensors(model), str(tmp / "model.safetensors"))
            tensors = dict(extra_tensors or {})
            meta: dict[str, Any] = {}
            if optimizer is not None:
                opt_tensors, meta = optimizer_to_flat(optimizer)
                tensors.update(opt_tensors)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            write_json_atomic(tmp / "state.json", {**state, "step": step, "optimizer": meta})
        self.prune(keep)
        return final

    def prune(self, keep: int) -> None:
        """Keep the newest `keep` checkpoints and the best one; remove debris of killed saves."""
        ckpts = self.checkpoints()
        best = self.best()
        for c in ckpts[: max(0, len(ckpts) - max(1, keep))]:
            if c != best:
                shutil.rmtree(c, ignore_errors=True)
        for p in self.checkpoints_dir.iterdir():
            if p.name.startswith((".tmp-", ".old-")) and not writer_alive(p):
                shutil.rmtree(p, ignore_errors=True)

    # -- the run's own files ------------------------------------------------------------------

    def config(self) -> Config:
        """The run's Config, with one-line errors for a missing folder or a folder that is no run."""
        if not self.path.is_dir():
            raise PsyDuckError(f"run folder not found: {self.path}; train one with `psyduck train --out {self.path}`")
        if not (self.path / "config.json").is_file():
            raise PsyDuckError(
                f"{self.path} is not a PsyDuck run (no config.json); point at a folder written by `psyduck train`"
            )
        return load_config_json(self.path / "config.json")

    def record_source(self, record: dict[str, Any]) -> None:
        """Keep where the run's weights came from (an import), as source.json."""
        write_json_atomic(self.path / SOURCE, record)

    def source(self) -> dict[str, Any] | None:
        """Where an imported run's weights came from (source.json), None for a run trained here."""
        path = self.path / SOURCE
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            return None  # a damaged note about provenance does not stop the run from loading


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why this checkpoint cannot be loaded (a few words), or None when every file reads back."""
    try:
        read_state(ckpt)
    except PsyDuckError:
        return "state.json is damaged"
    for name in ("model.safetensors", "optimizer.safetensors"):
        try:
            load_file(str(ckpt / name))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            return f"{name}: {short_error(e)}"
    return None


def read_state(ckpt: Path) -> dict[str, Any]:
    """A checkpoint's state.json."""
    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PsyDuckError(
            f"checkpoint {ckpt} has a damaged state.json ({short_error(e)}); resume from an earlier checkpoint"
        ) from None
    if not isinstance(state, dict):
        raise PsyDuckError(f"checkpoint {ckpt} has a damaged state.json (not a JSON object); resume from an earlier checkpoint")
    return state


def val_loss_of(ckpt: Path) -> float | None:
    """The val loss recorded with a checkpoint; None when absent, NaN or unreadable."""
    try:
        v = read_state(ckpt).get("val_loss")
    except PsyDuckError:
        return None
    return float(v) if isinstance(v, (int, float)) and v == v else None


def is_loadable(ckpt: Path) -> bool:
    """True when every file of the checkpoint reads back completely."""
    return checkpoint_problem(ckpt) is None


# Shorthands for the trainer and tests, which think in folders rather than RunFolder objects.

def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """`RunFolder(run_dir).checkpoints()`."""
    return RunFolder(run_dir).checkpoints()


def latest_checkpoint(run_dir: str | Path, log: Log | None = None) -> Path | None:
    """`RunFolder(run_dir).latest_loadable(log)`."""
    return RunFolder(run_dir).latest_loadable(log)


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """`RunFolder(run_dir).best()`."""
    return RunFolder(run_dir).best()


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any], extra_tensors: dict[str, torch.Tensor] | None = None, keep: int = 2) -> Path:
    """`RunFolder(run_dir).save_checkpoint(...)`."""
    return RunFolder(run_dir).save_checkpoint(step, model, optimizer, state, extra_tensors, keep)


def read_run_config(run_dir: str | Path) -> Config:
    """`RunFolder(run_dir).config()`."""
    return RunFolder(run_dir).config()


def load_run(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    log: Log | None = stderr_log,
):
    """Load a trained run: returns (model in eval mode, tokenizer).

    Uses the newest loadable checkpoint unless `checkpoint` names one ("best" picks the lowest val
    loss); damaged newer checkpoints are skipped and named through `log` (stderr by default).
    """
    from psyduck.model import GPT
    from psyduck.tokenizer import load_tokenizer

    run = RunFolder(run_dir)
    cfg = run.config()
    # a run's tokenizer.json is a copy of its data folder's, made when training started
    restore = (
        f"the run folder is damaged: copy tokenizer.json from the data folder it was trained on "
        f"({cfg.data.path}, per its config.json) into {run.path}"
    )
    tokenizer = load_tokenizer(run.path, fix=restore)
    if tokenizer.vocab_size > cfg.model.vocab_size or tokenizer.name != cfg.data.tokenizer:
        raise PsyDuckError(
            f"{run.path}/tokenizer.json is {tokenizer.name} ({tokenizer.vocab_size} tokens) but the model was trained "
            f"with {cfg.data.tokenizer} ({cfg.model.vocab_size} embedding rows); restore the run's own tokenizer.json"
        )
    ckpt = named_checkpoint(run, checkpoint) if checkpoint not in (None, "best") else run.pick(checkpoint, log)
    params, nbytes = hardware.model_footprint(cfg.model)
    hardware.require_memory(
        nbytes, torch.device("cpu"), f"loading {hardware.describe_model(cfg.model, params)}",
        f"check {run.path / 'config.json'}, or load it on a machine with more memory",
    )
    model = GPT(cfg.model)
    load_weights(model, ckpt / "model.safetensors")
    problem = nonfinite_weights(model)
    if problem is not None:
        raise PsyDuckError(
            f"the weights of run {run.path} ({ckpt.name}) are not finite ({problem}): training likely diverged; "
            "pick an earlier checkpoint with --checkpoint, or train again with a lower lr"
        )
    return model.to(device).eval(), tokenizer


def named_checkpoint(run: RunFolder, checkpoint: str | Path) -> Path:
    """The checkpoint folder a user named: a path, or a bare name inside the run (`step_0000020`).

    A name that is neither is "not found", and a file or a folder that never held a checkpoint (the
    run folder itself, say) "not a checkpoint folder": both list the run's checkpoints. A folder
    that is a checkpoint is returned even if damaged: loading it names what is wrong.
    """
    path = Path(checkpoint)
    inside = run.checkpoints_dir / path
    if not path.exists() and len(path.parts) == 1 and inside.exists():
        path = inside
    is_checkpoint = path.is_dir() and any((path / name).exists() for name in ("model.safetensors", "state.json"))
    if is_checkpoint:
        return path
    names = [c.name for c in run.checkpoints()]
    have = f"{run.path} has {', '.join(names)}" if names else f"{run.path} has no checkpoint yet"
    problem = "is not a checkpoint folder" if path.exists() else "not found"
    raise PsyDuckError(f"checkpoint {checkpoint} {problem}; {have} (pass one of them, or 'best', to --checkpoint)")


def nonfinite_weights(model: torch.nn.Module) -> str | None:
    """How many of a model's values are NaN or infinite, and where the first is; None when all are finite.

    One pass over the weights (tens of milliseconds for 124M parameters): a diverged run's NaNs would
    otherwise surface later as an IndexError inside sampling or a loss of NaN.
    """
    bad = total = 0
    first = None
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):  # tied weights once
        if t.is_floating_point():
            n = int(t.numel() - torch.isfinite(t.detach()).sum())
            total += t.numel()
            bad += n
            first = first or (name if n else None)
    return f"{bad:,} of {total:,} values are NaN or infinite, the first in {first}" if bad else None
