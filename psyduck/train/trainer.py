"""The training loop: when to step, evaluate, save, sample and stop.

(Over 400 lines on purpose: the loop and the state each step reads and writes are one object;
the rest has left, to preflight, step, state, signals, clock, evaluation, task_scores, telemetry.)
Every `eval_interval` steps: mean train and val loss over `eval_iters` batches, a line in
metrics.jsonl, the loss-curve PNG, a text sample, and a checkpoint (or every `checkpoint_interval`
steps, when that is set), with the benchmark scores `eval.tasks` names (task_scores.py). By the
clock (`train.max_seconds`) the run lasts its time budget, and the schedule and evaluations follow
the share of it spent (clock.py). The pieces live next door: what is settled before the first step
in preflight.py, the step itself in step.py, the random states a checkpoint holds in state.py,
Ctrl-C and SIGTERM in signals.py, several processes in distributed.py, speed and records in
telemetry.py.

What makes it dependable:
- exact resume: a resumed run takes bit-for-bit the same steps as one that never stopped (state.py),
  for step-based schedules; by the clock, the schedule continues from the training seconds stored;
- atomic, bounded checkpoints (see psyduck/runs.py): the last K and the best by val loss;
- a NaN or inf loss stops the run naming the step and the last good checkpoint (or skips the step
  with `on_nan=skip`); weights with NaN are never saved;
- Ctrl-C or SIGTERM finishes the current step, saves, and prints the command that resumes;
- the caller's `Config` is never changed: the trainer works on its own copy.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError

from psyduck import hardware
from psyduck.io import read_jsonl, write_json_atomic
from psyduck.runs import RunFolder, latest_checkpoint, list_checkpoints
from psyduck.state_dicts import load_weights, short_error
from psyduck.config import Config
from psyduck.errors import PsyDuckError
from psyduck.losses import FusedLoss, make_loss
from psyduck.model import GPT
from psyduck.tokenizer import Tokenizer
from psyduck.train import preflight
from psyduck.train.clock import Timetable, format_seconds
from psyduck.train.distributed import Distributed
from psyduck.train.evaluation import estimate_loss, sample
from psyduck.train.feed import Batches, Feed
from psyduck.train.signals import StopSignals
from psyduck.train.state import load_training_checkpoint, save_training_checkpoint
from psyduck.train.step import StepSetup, is_out_of_memory, lr_at, make_optimizer, out_of_memory_advice, train_step
from psyduck.train.task_scores import TaskScorer
from psyduck.train.telemetry import ProgressBar, RunLog, Speedometer, Window

SAMPLE_PROMPT = "The"


def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _why(e: BaseException) -> str:
    """'No space left on device': an OSError's own words, else the first line of the message."""
    return e.strerror if isinstance(e, OSError) and e.strerror else short_error(e)


class Trainer:
    """Trains `cfg` into the run folder `out`. Use `train(...)` for the one-call version."""

    def __init__(
        self,
        cfg: Config | None,
        out: str | Path,
        *,
        resume: bool = False,
        from_scratch: bool = False,
        init_from: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
        feed: Feed | None = None,
    ) -> None:
        self.out = Path(out)
        self.feed = feed  # data other than token shards (psyduck finetune); see feed.py
        self.dist = Distributed.from_env()
        self.log_fn = log or _to_stderr
        self.progress = progress and self.dist.main
        self.init_from = Path(init_from) if init_from else None
        preflight.check_out(self.out)
        saved = preflight.resume_config(RunFolder(self.out)) if resume or from_scratch else None
        self.lock = RunFolder(self.out).lock(self.log) if self.dist.main else None  # one writer per run folder
        try:
            self._set_up(cfg, saved, from_scratch)
        except BaseException:
            self.release()
            raise

    def _set_up(self, cfg: Config | None, saved: Config | None, from_scratch: bool) -> None:
        """Everything `__init__` does once the run folder is ours: data, device, model, optimizer."""
        cfg, self.resume_from = preflight.starting_point(RunFolder(self.out), cfg, saved, from_scratch, self.log, self.dist.main)
        self.cfg = copy.deepcopy(cfg)  # our own: the vocabulary and tokenizer are filled in here
        t = self.cfg.train
        self.data, self.tokenizer = self._open_data()
        self.tasks = TaskScorer(self.cfg.eval, self.tokenizer, self.cfg.model.block_size)  # read now: a bad task file fails before training
        self.device = self.dist.start(t.device, t.grad_accum)
        self.dtype = hardware.pick_dtype(self.device, t.dtype)
        note = hardware.half_precision_note(self.device, self.dtype)
        if note is not None:
            self.log(note)
        self.autocast = hardware.autocast(self.device, self.dtype)
        self.accum = t.grad_accum // self.dist.world_size
        self.loss = make_loss(t.loss, self.device)  # the output layer + loss, as train.loss names it
        self.eval_loss = self.loss if isinstance(self.loss, FusedLoss) else FusedLoss()  # evaluation never holds the logits
        self.run_log = RunLog(self.out)
        self._build_model()
        self.tokens_per_step = t.batch_size * self.cfg.model.block_size * t.grad_accum
        self.speed = Speedometer(self.model, self.device, self.dtype, self.dist.world_size)
        self._start_clock()
        self.stop_signal: str | None = None
        self.signals = StopSignals(self._on_signal)

    def release(self) -> None:
        """Let go of the run folder (`run` does this when it ends), so another trainer may take it."""
        if self.lock is not None:
            self.lock.release()

    # -- setting up ---------------------------------------------------------------------------

    def _open_data(self) -> tuple[Batches, Tokenizer]:
        """The batches and tokenizer: a fine-tuning feed's (which sized the vocabulary and checked its
        data), or the token shards of `data.path` (preflight.open_data)."""
        if self.feed is not None:
            return self.feed.batches, self.feed.tokenizer
        return preflight.open_data(self.cfg, self.out, self.resume_from is not None, self.init_from)

    def _build_model(self) -> None:
        """The model, optimizer and batch sampler, at step 0 or as the resumed checkpoint left them."""
        t = self.cfg.train
        preflight.check_model_fits(self.cfg, self.device)
        torch.manual_seed(t.seed + self.dist.rank)  # weights are broadcast by DDP; dropout differs per rank
        self.model = GPT(self.cfg.model).to(self.device)
        if self.init_from is not None:
            init_ckpt = latest_checkpoint(self.init_from)
            if init_ckpt is None:
                raise PsyDuckError(f"{self.init_from} has no loadable checkpoint to start from")
            load_weights(self.model, init_ckpt / "model.safetensors")
            self.log(f"initialized weights from {init_ckpt}")
        elif self.feed is not None and self.resume_from is None:
            self.feed.init_weights(self.model)
        self.optimizer = make_optimizer(self.model, t, self.device)
        self.step = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0  # the training time of earlier processes of this run (resume)
        self.best_val = float("inf")
        self.batch_gen = torch.Generator().manual_seed(t.seed)
        self.order = preflight.epoch_order(self.cfg, self.data, self.feed is not None)
        if self.resume_from is not None:
            self.restore(self.resume_from)
        net: torch.nn.Module = torch.compile(self.model) if t.compile else self.model
        self.step_setup = StepSetup(
            net=self.dist.wrap(net, self.device), model=self.model, optimizer=self.optimizer, train=t,
            accum=self.accum, autocast=self.autocast, loss=self.loss, ranks=self.dist,
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16))

    def _start_clock(self) -> None:
        """The timetable (by steps or by the clock) from the training seconds used so far, and
        the learning rate of the last step taken."""
        agree = functools.partial(self.dist.any_rank, device=self.device)
        self.timetable = Timetable(self.cfg.train, self.train_seconds, agree)
        self.clock = self.timetable.clock
        self.lr = lr_at(max(self.step - 1, 0), self.cfg.train, self.clock.fraction())

    # -- helpers ------------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        """A line for the person running it (rank 0 only: N processes would print it N times)."""
        if self.dist.main:
            self.log_fn(msg)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the step's global batch: (accum * batch_size, block_size) each."""
        rows = self.cfg.train.batch_size * self.accum
        n, block = rows * self.dist.world_size, self.cfg.model.block_size
        x, y = (self.data.windows("train", self.order.starts(self.step * n, n), block) if self.order  # shuffle
                else self.data.get_batch("train", n, block, self.batch_gen))
        sl = slice(self.dist.rank * rows, (self.dist.rank + 1) * rows)
        return x[sl].to(self.device, non_blocking=True), y[sl].to(self.device, non_blocking=True)

    def save(self, reason: str = "eval", val_loss: float | None = None) -> Path:
        """Checkpoint now (rank 0 writes; others wait)."""
        path = self.out / "checkpoints" / f"step_{self.step:07d}"
        if self.dist.main:
            info = {
                "tokens_seen": self.tokens_seen,
                "val_loss": val_loss,
                "best_val": self.best_val if self.best_val < float("inf") else None,
                "reason": reason,
                "world_size": self.dist.world_size,
                "train_seconds": self.clock.seconds(),
                "time": time.time(),
            }
            try:
                path = save_training_checkpoint(
                    self.out, self.step, self.model, self.optimizer, info, self.batch_gen, self.device,
                    keep=self.cfg.train.keep_checkpoints,
                )
            except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error
                raise PsyDuckError(
                    f"saving checkpoint {path.name} into {self.out} failed ({_why(e)}); free some space or fix "
                    f"the folder, then resume with: {self.resume_command()}"
                ) from None
        self.dist.barrier()
        return path

    def restore(self, ckpt: Path) -> None:
        """Continue from `ckpt`: weights, optimizer, counters, random states; later metric rows dropped."""
        state = load_training_checkpoint(ckpt, self.model, self.optimizer, self.batch_gen, self.device)
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.best_val = state.get("best_val") or float("inf")
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if self.dist.main:
            self.run_log.forget_after(self.step)
        self.log(f"resuming from {ckpt} (step {self.step})")

    def _on_signal(self, name: str) -> None:
        """Raise the stop flag: the loop saves after the current step (a second signal stops at once)."""
        if self.stop_signal is not None:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self.stop_signal = name
        self.log(f"{name} received: finishing this step, then saving (again to stop at once)")

    def resume_command(self) -> str:
        return self.feed.resume_command if self.feed else f"psyduck train --out {self.out} --resume"

    # -- the loop -----------------------------------------------------------------------------

    def record_evaluation(self, train_window_loss: float | None, tok_per_s: float, final: bool = False) -> dict[str, Any]:
        """Evaluate (the tasks too, when due or `final`); rank 0 writes the metrics row, the loss
        curve and a sample. Returns the row."""
        t, bs = self.cfg.train, self.cfg.model.block_size
        losses = estimate_loss(self.model, self.data, t, bs, self.step, self.device, self.autocast, self.eval_loss)
        elapsed = self.clock.seconds()
        self.speed.recheck_peak(elapsed)
        row = {
            "step": self.step,
            "tokens": self.tokens_seen,
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "val_bpb": losses["val"] / math.log(2) * self.data.num_tokens("val") / max(1, self.data.num_bytes("val")),
            "train_window_loss": train_window_loss,
            "lr": self.lr,
            "tokens_per_s": tok_per_s,
            "mfu": self.speed.mfu(tok_per_s) if tok_per_s else None,
            "elapsed_s": elapsed,
        }
        if self.dist.main and self.tasks.with_evaluation(self.step, final):
            row.update(self.tasks.scores(self.model, self.tokenizer))
        if self.dist.main:
            self.run_log.write(row)
            if t.sample_tokens:  # a feed's prompt (e.g. a held-out question), else SAMPLE_PROMPT
                prompt = self.feed.sample_prompt if self.feed else (SAMPLE_PROMPT, self.tokenizer.encode(SAMPLE_PROMPT), ())
                text = sample(self.model, self.tokenizer, prompt, t)
                with open(self.out / "samples.txt", "a", encoding="utf-8") as f:
                    f.write(f"--- step {self.step} (val loss {losses['val']:.3f})\n{text}\n\n")
        self.best_val = min(self.best_val, losses["val"])
        return row

    def run(self) -> dict[str, Any]:
        """Train to `max_iters` (or the time budget, or a signal); returns the last evaluation, with
        the true step and token counts, and `stopped_by` naming the signal when one stopped it.

        A write that fails (a full disk, a folder made read-only) ends the run with one line; the
        run folder is released however the run ends.
        """
        try:
            return self._run()
        except OSError as e:
            if isinstance(e, BrokenPipeError):  # the reader of our output left: not the run's fault
                raise
            raise PsyDuckError(
                f"{_why(e)}: {e.filename or self.out}; free some space or fix the folder, then resume with: "
                f"{self.resume_command()}"
            ) from None
        finally:
            self.release()

    def _run(self) -> dict[str, Any]:
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "config.json", self.cfg.to_dict())
            self.tokenizer.save(self.out)
            if self.resume_from is None:  # a run from step 0 starts its own history
                self.run_log.forget_after(-1)
        finished = self._already_finished()
        if finished is not None:
            return finished
        self.signals.install()
        if self.dist.main:
            self.run_log.open_loggers(self.cfg)
        self.log(
            f"training {self.model.num_params() / 1e6:.2f}M parameters on {self.device} "
            f"({str(self.dtype).replace('torch.', '')}), {self.data.num_tokens('train'):,} train tokens, "
            f"{self.tokens_per_step:,} tokens/step, {self.dist.describe()} -> {self.out}"
        )
        t = self.cfg.train
        self._start_clock()  # the training time starts now
        if self.clock.by_time:
            self.log(self.timetable.describe())
        bar = ProgressBar(self.progress, t.max_iters, self.step, t.max_seconds, self.clock.seconds())
        try:
            last_row = self._loop(bar)
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(e):
                raise
            ckpts = list_checkpoints(self.out)
            advice = out_of_memory_advice(self.cfg.train, self.device, self.tokens_per_step, ckpts[-1] if ckpts else None)
            raise PsyDuckError(advice) from None
        finally:
            bar.close()
            self.run_log.close(draw=self.dist.main)
            self.signals.restore()
        return self._result(last_row)

    def _result(self, row: dict[str, Any]) -> dict[str, Any]:
        """What `run` returns: the evaluation `row`, under the true step and token counts (a signal
        can stop the run between evaluations)."""
        result = {"run": str(self.out), "step": self.step, **{k: v for k, v in row.items() if k != "step"}}
        result["tokens"] = self.tokens_seen
        if self.stop_signal is not None:
            result["stopped_by"] = self.stop_signal
        return result

    def _already_finished(self) -> dict[str, Any] | None:
        """A resumed run already at its end (`max_iters`, or its time budget spent) has nothing to
        train: its last row, and no second one."""
        if self.resume_from is None or not self.timetable.done(self.step):
            return None
        rows = [r for r in read_jsonl(self.run_log.metrics) if r.get("step") == self.step]
        if not rows:  # stopped before its final evaluation: the loop records it
            return None
        t = self.cfg.train
        end = f"its time budget (train.max_seconds={t.max_seconds:g}) spent" if t.max_seconds else f"train.max_iters={t.max_iters}"
        more = "raise max_seconds (or --minutes)" if t.max_seconds else "raise max_iters"
        self.log(f"{self.out} is already at step {self.step} ({end}): nothing to train; {more} to train on")
        return self._result(rows[-1])

    def _loop(self, bar: ProgressBar) -> dict[str, Any]:
        """Step until done, evaluating and saving on schedule; returns the last evaluation row."""
        last_row: dict[str, Any] = {}
        if self.step == 0 and self.resume_from is None:
            last_row = self.record_evaluation(None, 0.0)
        window = Window()
        self.model.train()
        while not self.timetable.done(self.step):
            loss = self.train_step()
            if loss is None:  # skipped (on_nan=skip)
                continue
            window.add(loss, self.tokens_per_step)
            now = time.perf_counter()
            tok_s = window.tokens_per_s(now)
            bar.step(loss, tok_s, self.speed.mfu(tok_s), self.step, self.clock.seconds())
            last_row = self._on_schedule(window, tok_s, bar, last_row)
            if self._stop_requested():
                path = self.save(f"signal {self.stop_signal}")
                self.log(f"stopped by {self.stop_signal} at step {self.step}; saved {path}")
                self.log(f"resume with: {self.resume_command()}")
                break
        else:
            if self.clock.by_time:
                self.log(f"time budget of {format_seconds(self.clock.budget)} reached at step {self.step}")
            if not last_row or last_row.get("step") != self.step:  # the steps since the last evaluation count too
                window_loss = window.mean_loss() if window.losses else None
                rate = window.tokens_per_s(time.perf_counter()) if window.losses else 0.0
                last_row = self.record_evaluation(window_loss, rate, final=True)
                self.save("time budget" if self.clock.by_time else "final", last_row["val_loss"])
        return last_row

    def _on_schedule(self, window: Window, tok_s: float, bar: ProgressBar, last_row: dict[str, Any]) -> dict[str, Any]:
        """After a step: evaluate, score the tasks and/or checkpoint when due; returns the newest row."""
        t = self.cfg.train
        due_eval = self.timetable.eval_due(self.step)
        if due_eval:
            last_row = self.record_evaluation(window.mean_loss(), tok_s)
            left = f", {format_seconds(self.clock.left())} left" if self.clock.by_time else ""
            bar.write(f"step {self.step}: train {last_row['train_loss']:.4f}, val {last_row['val_loss']:.4f}, {tok_s:,.0f} tok/s{left}")
            if not t.checkpoint_interval:
                self.save("eval", last_row["val_loss"])
            window.reset()
        elif self.tasks.alone(self.step) and self.dist.main:  # a row of benchmark scores alone
            scores = self.tasks.scores(self.model, self.tokenizer)
            self.run_log.write({"step": self.step, "tokens": self.tokens_seen, "elapsed_s": self.clock.seconds(), **scores})
        if t.checkpoint_interval and self.step % t.checkpoint_interval == 0:
            self.save("interval", last_row.get("val_loss") if due_eval else None)
        return last_row

    def _stop_requested(self) -> bool:
        """Whether to stop now: a signal here, or on any other rank (every rank stops at the same step)."""
        flag = self.dist.any_rank(self.stop_signal is not None, self.device)
        self.stop_signal = self.stop_signal or ("peer signal" if flag else None)
        return flag

    def train_step(self, fraction: float | None = None) -> float | None:
        """One optimizer step; returns its mean loss, or None when skipped. `fraction`: the share of a
        time budget spent by a clock kept elsewhere (a benchmark's); default: the run's own clock."""
        x, y = self.next_batch()
        self.lr = lr_at(self.step, self.cfg.train, self.clock.fraction() if fraction is None else fraction)
        value = train_step(self.step_setup, x, y, self.lr)
        if not math.isfinite(value):
            return self.on_blowup(value)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        return value

    def on_blowup(self, value: float) -> None:
        """A non-finite loss: skip the step (`on_nan=skip`) or stop, naming the last good checkpoint."""
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


def train(
    cfg: Config | None = None,
    out: str | Path = "runs/demo",
    *,
    resume: bool = False,
    from_scratch: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `cfg` into the run folder `out` (`cfg` itself is left as it was); returns the last
    evaluation's numbers. `resume`: continue the run in `out` from its newest loadable checkpoint
    (its saved config, or `cfg` with the changes listed); `from_scratch`: train it anew, its old
    checkpoints and metrics moved aside; `init_from`: another run's weights, a fresh optimizer."""
    trainer = Trainer(cfg, out, resume=resume, from_scratch=from_scratch, init_from=init_from, progress=progress)
    try:
        result = trainer.run()
        trainer.dist.barrier()  # rank 0 may still be drawing or saving: leave together, or gloo hangs in teardown
        return result
    finally:
        trainer.dist.close()
