"""The training loop and its evaluation schedule.

One optimizer step:
    lr <- schedule(step)                               warmup + cosine, or constant (the seed)
    for each micro-batch (gradient accumulation):      several small batches act as one big one
        loss = model(x, y) / accum;  loss.backward()
    clip the gradient norm; AdamW step; zero the gradients

Every `eval_interval` steps: mean train and val loss over `eval_iters` batches, a line in
metrics.jsonl, the loss-curve PNG, a text sample, and a checkpoint.

What makes it dependable:
- exact resume: a checkpoint holds the weights, AdamW's moments, the step, and every random state
  (python, numpy, torch, the batch sampler), so a killed run resumed from it takes bit-for-bit the
  same steps as one that never stopped;
- atomic, bounded checkpoints (see checkpoint.py): the last K and the best by val loss;
- a NaN or inf loss stops the run naming the step and the last good checkpoint (or skips the step
  with `on_nan=skip`); weights with NaN are never saved;
- Ctrl-C or SIGTERM finishes the current step, saves, and prints the command that resumes;
- several processes: under `torchrun`, DDP over NCCL (GPUs) or gloo (CPUs). All ranks draw the same
  global batch of windows and each trains on its own slice, so N processes with accumulation A/N
  take the same steps as one process with accumulation A.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from psyduck import hardware
from psyduck.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    optimizer_from_flat,
    read_run_config,
    read_state,
    save_checkpoint,
    unwrap,
    write_json_atomic,
)
from psyduck.config import Config, TrainConfig
from psyduck.data.loader import TokenData
from psyduck.errors import PsyDuckError
from psyduck.losses import use_fused_loss
from psyduck.model import GPT
from psyduck.plot import BackgroundPlotter
from psyduck.tokenizer import Tokenizer, load_tokenizer

SAMPLE_PROMPT = "The"


def lr_at(step: int, t: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if t.schedule == "constant":
        return t.lr
    if step < t.warmup_iters:  # linear warmup from lr/warmup to lr
        return t.lr * (step + 1) / t.warmup_iters
    span = max(1, t.max_iters - t.warmup_iters)
    progress = min(1.0, (step - t.warmup_iters) / span)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


def make_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weights only (matrices and embeddings, not biases or norms).

    The fused implementation (one kernel for all parameters) is used where PyTorch has it: on this
    class of CPU it is ~6x faster than the default loop over parameters.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"lr": t.lr, "betas": (t.beta1, t.beta2)}
    if device.type in ("cuda", "cpu", "mps"):
        kwargs["fused"] = True
    try:
        return torch.optim.AdamW(groups, **kwargs)
    except (RuntimeError, TypeError):
        kwargs.pop("fused", None)
        return torch.optim.AdamW(groups, **kwargs)


@dataclass
class Distributed:
    """Where this process sits among the ones `torchrun` started (rank 0 of 1 when alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # started by torchrun: use the process group even when alone

    @property
    def enabled(self) -> bool:
        return self.launched or self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]), True)


class Trainer:
    """Trains `cfg` into the run folder `out`. Use `train(...)` for the one-call version."""

    def __init__(
        self,
        cfg: Config | None,
        out: str | Path,
        *,
        resume: bool = False,
        init_from: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.out = Path(out)
        self.dist = Distributed.from_env()
        self.log_fn = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.progress = progress and self.dist.main
        self.resume_from: Path | None = None
        if resume and (self.out / "config.json").exists():
            saved = read_run_config(self.out)
            cfg = saved if cfg is None else cfg
            self.resume_from = latest_checkpoint(self.out, log=self.log)
            if self.resume_from is None:
                self.log(f"{self.out} has no loadable checkpoint yet: starting from step 0")
        elif cfg is None:
            raise PsyDuckError(f"nothing to resume in {self.out} (no config.json); start a run with --preset")
        elif list_checkpoints(self.out):
            raise PsyDuckError(
                f"{self.out} already holds a run; pass --resume to continue it or choose another --out"
            )
        assert cfg is not None
        self.cfg = cfg
        t = cfg.train

        # -- data and tokenizer ----------------------------------------------------------------
        self.data = TokenData(cfg.data.path)
        self.tokenizer: Tokenizer = load_tokenizer(Path(cfg.data.path))
        self.init_from = Path(init_from) if init_from else None
        if self.resume_from is not None or (self.out / "tokenizer.json").exists():
            self.data.check_tokenizer(load_tokenizer(self.out))
        if self.init_from is not None:
            self.data.check_tokenizer(load_tokenizer(self.init_from))
        cfg.data.tokenizer = self.data.tokenizer_name  # what the run speaks, checked when it is loaded
        if self.resume_from is not None or self.init_from is not None:  # keep a padded embedding (imports)
            cfg.model.vocab_size = max(cfg.model.vocab_size, self.data.vocab_size)
        else:
            cfg.model.vocab_size = self.data.vocab_size
        for split in ("train", "val"):
            self.data.check_fits(split, cfg.model.block_size)

        # -- device, precision, processes ----------------------------------------------------
        if self.dist.enabled:
            if t.grad_accum % self.dist.world_size:
                raise PsyDuckError(
                    f"grad_accum={t.grad_accum} is not divisible by the {self.dist.world_size} processes; "
                    "set --grad-accum to a multiple of --nproc_per_node"
                )
            backend = "nccl" if torch.cuda.is_available() and t.device in ("auto", "cuda") else "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend=backend)
            if backend == "nccl":
                torch.cuda.set_device(self.dist.local_rank)
                self.device = torch.device("cuda", self.dist.local_rank)
            else:
                self.device = torch.device("cpu")
        else:
            self.device = hardware.pick_device(t.device)
        self.dtype = hardware.pick_dtype(self.device, t.dtype)
        self.autocast = hardware.autocast(self.device, self.dtype)
        self.accum = t.grad_accum // self.dist.world_size
        self.full_logits = not use_fused_loss(t.loss, self.device)  # plain loss: keep the (B, T, V) logits

        # -- model and optimizer ---------------------------------------------------------------
        torch.manual_seed(t.seed + self.dist.rank)  # weights are broadcast by DDP; dropout differs per rank
        self.model = GPT(cfg.model).to(self.device)
        if self.init_from is not None:
            init_ckpt = latest_checkpoint(self.init_from)
            if init_ckpt is None:
                raise PsyDuckError(f"{self.init_from} has no loadable checkpoint to start from")
            load_weights(self.model, init_ckpt / "model.safetensors")
            self.log(f"initialized weights from {init_ckpt}")
        self.optimizer = make_optimizer(self.model, t, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0
        self.tokens_seen = 0
        self.best_val = float("inf")
        self.batch_gen = torch.Generator().manual_seed(t.seed)
        if self.resume_from is not None:
            self.restore(self.resume_from)
        self.net: torch.nn.Module = self.model
        if t.compile:
            self.net = torch.compile(self.net)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.net, device_ids=ids)
        self.tokens_per_step = t.batch_size * cfg.model.block_size * t.grad_accum
        self.flops_per_token = hardware.flops_per_token(self.model)
        self.peak = hardware.peak_flops(self.device, self.dtype) * self.dist.world_size
        self.peak_rechecked = False
        self.stop_signal: str | None = None
        self.loggers = ExternalLoggers.none()
        self.plotter = BackgroundPlotter()

    # -- helpers ------------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        if self.dist.main:
            self.log_fn(msg)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the step's global batch: (accum * batch_size, block_size) each."""
        t = self.cfg.train
        rows = t.batch_size * self.accum
        x, y = self.data.get_batch("train", rows * self.dist.world_size, self.cfg.model.block_size, self.batch_gen)
        sl = slice(self.dist.rank * rows, (self.dist.rank + 1) * rows)
        return x[sl].to(self.device, non_blocking=True), y[sl].to(self.device, non_blocking=True)

    @torch.no_grad()
    def estimate_loss(self) -> dict[str, float]:
        """Mean loss over eval_iters batches per split, drawn from a generator seeded by the step,
        so the estimate does not depend on whether the run was resumed."""
        self.model.eval()
        out = {}
        t = self.cfg.train
        for split in ("train", "val"):
            g = torch.Generator().manual_seed(t.seed * 1_000_003 + self.step)
            losses = []
            for _ in range(t.eval_iters):
                x, y = self.data.get_batch(split, t.batch_size, self.cfg.model.block_size, g)
                with self.autocast:
                    _, loss = self.model(x.to(self.device), y.to(self.device), return_logits=False)
                losses.append(loss.item())
            out[split] = sum(losses) / len(losses)
        self.model.train()
        return out

    def sample(self) -> str:
        ids = self.tokenizer.encode(SAMPLE_PROMPT)
        x = torch.tensor([ids], device=self.device)
        out = self.model.generate(
            x, max_new_tokens=self.cfg.train.sample_tokens, temperature=0.8, top_k=50, seed=self.cfg.train.seed,
            eot_id=self.tokenizer.eot_id,
        )
        return self.tokenizer.decode([i for i in out[0].tolist() if i != self.tokenizer.eot_id])

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"rng.torch": torch.get_rng_state(), "rng.batch": self.batch_gen.get_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return tensors

    def save(self, reason: str = "eval", val_loss: float | None = None) -> Path:
        """Checkpoint now (rank 0 writes; others wait)."""
        path = self.out / "checkpoints" / f"step_{self.step:07d}"
        if self.dist.main:
            np_state = np.random.get_state()
            state = {
                "tokens_seen": self.tokens_seen,
                "val_loss": val_loss,
                "best_val": self.best_val if self.best_val < float("inf") else None,
                "reason": reason,
                "rng_python": _jsonable(random.getstate()),
                "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                "world_size": self.dist.world_size,
                "time": time.time(),
            }
            path = save_checkpoint(
                self.out, self.step, self.model, self.optimizer, state, self.rng_tensors(),
                keep=self.cfg.train.keep_checkpoints,
            )
        if self.dist.enabled:
            dist.barrier()
        return path

    def restore(self, ckpt: Path) -> None:
        from safetensors.torch import load_file

        state = read_state(ckpt)
        load_weights(self.model, ckpt / "model.safetensors")
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
        if state.get("optimizer"):
            optimizer_from_flat(self.optimizer, tensors, state["optimizer"])
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.best_val = state.get("best_val") or float("inf")
        if "rng.torch" in tensors:  # absent in runs made by import-hf
            torch.set_rng_state(tensors["rng.torch"])
        if "rng.batch" in tensors:
            self.batch_gen.set_state(tensors["rng.batch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        if state.get("rng_python"):
            random.setstate(_tuplify(state["rng_python"]))
        if state.get("rng_numpy"):
            n = state["rng_numpy"]
            np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
        # metrics written after this checkpoint belong to a future that did not happen
        metrics = self.out / "metrics.jsonl"
        if metrics.exists() and self.dist.main:
            keep = [line for line in metrics.read_text(encoding="utf-8").splitlines() if _line_step(line) <= self.step]
            tmp = metrics.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, metrics)
        self.log(f"resuming from {ckpt} (step {self.step})")

    def write_metrics(self, row: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.loggers.log(row, self.step)

    def _handle_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self.stop_signal is not None:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self.stop_signal = signal.Signals(signum).name
        self.log(f"{self.stop_signal} received: finishing this step, then saving (again to stop at once)")

    def resume_command(self) -> str:
        return f"psyduck train --out {self.out} --resume"

    # -- the loop -----------------------------------------------------------------------------

    def evaluate_and_save(self, train_window_loss: float | None, tok_per_s: float, elapsed: float) -> dict:
        losses = self.estimate_loss()
        if self.device.type == "cpu" and elapsed > 30 and not self.peak_rechecked:
            # the CPU peak is measured, and the cold start of a run reads it low: measure once more, warm
            self.peak = max(self.peak, hardware.peak_flops(self.device, self.dtype) * self.dist.world_size)
            self.peak_rechecked = True
        row = {
            "step": self.step,
            "tokens": self.tokens_seen,
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "val_bpb": losses["val"] / math.log(2) * self.data.num_tokens("val") / max(1, self.data.num_bytes("val")),
            "train_window_loss": train_window_loss,
            "lr": lr_at(max(self.step - 1, 0), self.cfg.train),
            "tokens_per_s": tok_per_s,
            "mfu": tok_per_s * self.flops_per_token / self.peak if tok_per_s else None,
            "elapsed_s": elapsed,
        }
        if self.dist.main:
            self.write_metrics(row)
            self.plotter.update(self.out / "metrics.jsonl", self.out / "loss_curve.png", title=self.out.name)
            if self.cfg.train.sample_tokens:
                text = self.sample()
                with open(self.out / "samples.txt", "a", encoding="utf-8") as f:
                    f.write(f"--- step {self.step} (val loss {losses['val']:.3f})\n{text}\n\n")
        self.best_val = min(self.best_val, losses["val"])
        return row

    def run(self) -> dict[str, Any]:
        t = self.cfg.train
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "config.json", self.cfg.to_dict())
            self.tokenizer.save(self.out)
        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[sig] = signal.signal(sig, self._handle_signal)
            except ValueError:  # not the main thread
                pass
        if self.dist.main:
            self.loggers = ExternalLoggers.create(self.cfg, self.out)
        self.log(
            f"training {self.model.num_params() / 1e6:.2f}M parameters on {self.device} ({str(self.dtype).replace('torch.', '')}), "
            f"{self.data.num_tokens('train'):,} train tokens, {self.tokens_per_step:,} tokens/step, "
            f"{self.dist.world_size} process(es){f' ({dist.get_backend()})' if self.dist.enabled else ''} -> {self.out}"
        )
        last_row: dict[str, Any] = {}
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.max_iters, initial=self.step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)
        start_time = time.perf_counter()
        try:
            if self.step == 0 and self.resume_from is None:
                last_row = self.evaluate_and_save(None, 0.0, 0.0)
            window_losses: list[float] = []
            window_start, window_tokens = time.perf_counter(), 0
            self.model.train()
            while self.step < t.max_iters:
                if t.max_seconds and time.perf_counter() - start_time > t.max_seconds:
                    self.log(f"time budget of {t.max_seconds:.0f}s reached at step {self.step}")
                    break
                loss = self.train_step()
                if loss is None:  # skipped (on_nan=skip)
                    continue
                window_losses.append(loss)
                window_tokens += self.tokens_per_step
                now = time.perf_counter()
                tok_s = window_tokens / max(now - window_start, 1e-9)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{100 * tok_s * self.flops_per_token / self.peak:.0f}%")
                due_eval = self.step % t.eval_interval == 0 or self.step == t.max_iters
                due_ckpt = t.checkpoint_interval and self.step % t.checkpoint_interval == 0
                if due_eval:
                    last_row = self.evaluate_and_save(sum(window_losses) / len(window_losses), tok_s, now - start_time)
                    if bar is not None:
                        bar.write(f"step {self.step}: train {last_row['train_loss']:.4f}, val {last_row['val_loss']:.4f}, {tok_s:,.0f} tok/s")
                    if not t.checkpoint_interval:
                        self.save("eval", last_row["val_loss"])
                    window_losses, window_start, window_tokens = [], time.perf_counter(), 0
                if due_ckpt and not (due_eval and not t.checkpoint_interval):
                    self.save("interval", last_row.get("val_loss") if due_eval else None)
                if self._stop_requested():
                    path = self.save(f"signal {self.stop_signal}")
                    self.log(f"stopped by {self.stop_signal} at step {self.step}; saved {path}")
                    self.log(f"resume with: {self.resume_command()}")
                    break
            else:
                if not last_row or last_row.get("step") != self.step:
                    last_row = self.evaluate_and_save(None, 0.0, time.perf_counter() - start_time)
                    self.save("final", last_row["val_loss"])
            if t.max_seconds and self.step < t.max_iters and last_row.get("step") != self.step:
                last_row = self.evaluate_and_save(None, 0.0, time.perf_counter() - start_time)
                self.save("time budget", last_row["val_loss"])
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(e):
                raise
            raise PsyDuckError(self.out_of_memory_advice()) from None
        finally:
            if bar is not None:
                bar.close()
            if self.dist.main and (self.out / "metrics.jsonl").exists():
                self.plotter.close(self.out / "metrics.jsonl", self.out / "loss_curve.png", title=self.out.name)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self.loggers.close()
        return {"run": str(self.out), "step": self.step, **{k: v for k, v in last_row.items() if k != "step"}}

    def out_of_memory_advice(self) -> str:
        t = self.cfg.train
        if t.batch_size > 1:
            fix = (f"train.batch_size={t.batch_size // 2} train.grad_accum={t.grad_accum * 2} "
                   f"(the same {self.tokens_per_step:,} tokens per step)")
        else:
            fix = "a smaller model (model.d_model, model.n_layer) or context (model.block_size)"
        ckpts = list_checkpoints(self.out)
        last = f"; last checkpoint: {ckpts[-1]}" if ckpts else ""
        return f"out of memory on {self.device} at train.batch_size={t.batch_size}; try {fix}{last}"

    def _stop_requested(self) -> bool:
        flag = self.stop_signal is not None
        if self.dist.enabled:  # every rank stops at the same step
            f = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(f, op=dist.ReduceOp.MAX)
            flag = bool(f.item())
            if flag and self.stop_signal is None:
                self.stop_signal = "peer signal"
        return flag

    def train_step(self) -> float | None:
        """One optimizer step; returns the mean loss of its micro-batches, or None when skipped."""
        t = self.cfg.train
        lr = lr_at(self.step, t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.next_batch()
        total = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            sl = slice(micro * t.batch_size, (micro + 1) * t.batch_size)
            sync = nullcontext()
            if self.dist.enabled and micro < self.accum - 1:
                sync = self.net.no_sync()  # only the last micro-batch all-reduces gradients
            with sync, self.autocast:
                _, loss = self.net(x[sl], y[sl], return_logits=self.full_logits)
            self.scaler.scale(loss / self.accum).backward()
            total += loss.detach().float()
        total /= self.accum
        if self.dist.enabled:
            dist.all_reduce(total, op=dist.ReduceOp.AVG if dist.get_backend() == "nccl" else dist.ReduceOp.SUM)
            if dist.get_backend() != "nccl":
                total /= self.dist.world_size
        value = total.item()
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            if not math.isfinite(float(norm)) and self.dtype != torch.float16:
                value = float("nan")  # a finite loss with a broken gradient is a blow-up too
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            return self.on_blowup(value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        return value

    def on_blowup(self, value: float) -> None:
        ckpts = list_checkpoints(self.out)
        last = str(ckpts[-1]) if ckpts else "none yet"
        if self.cfg.train.on_nan == "skip":
            self.log(f"loss is {value} at step {self.step + 1}: skipped this step (on_nan=skip)")
            self.step += 1  # the step is spent (the schedule moves on) but the weights are untouched
            return None
        raise PsyDuckError(
            f"loss became {value} at step {self.step + 1}; last good checkpoint: {last}; "
            f"lower --lr or resume with on_nan=skip"
        )


def is_out_of_memory(e: BaseException) -> bool:
    """A GPU's out-of-memory error (torch.OutOfMemoryError; torch.cuda's name also works on torch 2.4),
    or a CPU allocation that failed."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(e)


def train(
    cfg: Config | None = None,
    out: str | Path = "runs/demo",
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `cfg` into the run folder `out`; returns the last evaluation's numbers.

    `resume=True` continues the run in `out` from its newest loadable checkpoint (with `cfg=None`,
    using the config it saved). `init_from` starts from another run's weights with a fresh
    optimizer and schedule (fine-tuning on new data prepared with the same tokenizer).
    """
    trainer = Trainer(cfg, out, resume=resume, init_from=init_from, progress=progress)
    try:
        result = trainer.run()
        if trainer.dist.enabled:
            dist.barrier()  # rank 0 may still be drawing or saving: leave together, or gloo hangs in teardown
        return result
    finally:
        if trainer.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Optional external loggers (TensorBoard, Weights & Biases): imported only when asked for
# ---------------------------------------------------------------------------------------------

class ExternalLoggers:
    """Forward metric rows to TensorBoard and/or W&B when `train.loggers` names them."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    @classmethod
    def none(cls) -> "ExternalLoggers":
        return cls([])

    @classmethod
    def create(cls, cfg: Config, out: Path) -> "ExternalLoggers":
        names = [n.strip() for n in cfg.train.loggers.split(",") if n.strip()]
        sinks: list[Any] = []
        for name in names:
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise PsyDuckError("tensorboard logging asked for but not installed; pip install tensorboard") from None
                sinks.append(("tensorboard", SummaryWriter(log_dir=str(out / "tensorboard"))))
            elif name == "wandb":
                try:
                    import wandb
                except ImportError:
                    raise PsyDuckError("wandb logging asked for but not installed; pip install wandb") from None
                sinks.append(("wandb", wandb.init(project="psyduck", name=out.name, config=cfg.to_dict())))
            else:
                raise PsyDuckError(f"unknown logger {name!r} in train.loggers; use tensorboard and/or wandb")
        return cls(sinks)

    def log(self, row: dict[str, Any], step: int) -> None:
        for kind, sink in self.sinks:
            scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            if kind == "tensorboard":
                for k, v in scalars.items():
                    sink.add_scalar(k, v, step)
            else:
                sink.log(scalars, step=step)

    def close(self) -> None:
        for kind, sink in self.sinks:
            sink.close() if kind == "tensorboard" else sink.finish()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_jsonable(o) for o in obj]
    return obj


def _tuplify(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_tuplify(o) for o in obj)
    return obj


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, ValueError):
        return 1 << 62  # a torn line is dropped
