"""One optimizer step, and what it is made of: the learning-rate schedule and the optimizer.

    lr <- lr_at(step, t, fraction)                      warmup + cosine or wsd, or constant (the seed)
    for each micro-batch (gradient accumulation):       several small batches act as one big one
        loss = model(x, y) / accum;  loss.backward()    under DDP only the last one all-reduces
    clip the gradient norm; AdamW step; zero the gradients

`train_step` is a plain function of a `StepSetup` (what every step of a run shares) and one batch,
so the trainer and `benchmarks/train_throughput.py` run exactly the same code. A loss or gradient
norm that is not finite never reaches the weights: the update is dropped, the gradients cleared,
and the caller decides what the blow-up means (`on_nan`: stop the run, or skip the step).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from psyduck.config import TrainConfig
from psyduck.losses import OutputLoss, plain_loss
from psyduck.train.distributed import Distributed
from psyduck.train.muon import MuonAdamW, hidden_matrices, make_muon

Optimizer = torch.optim.Optimizer | MuonAdamW  # what `make_optimizer` returns, and `train_step` steps


def lr_at(step: int, t: TrainConfig, fraction: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based), or at `fraction` of a time budget spent.

    By steps the run is `max_iters` long: warmup over `warmup_iters` steps, then the decay. By the
    clock (`fraction` given, 0..1) the same shape is drawn over the budget instead, so it fits any
    machine: warmup takes warmup_iters/max_iters of the budget and the rate reaches `min_lr` when
    the budget ends, however many steps fit in it.
    """
    if t.schedule == "constant":
        return t.lr
    if fraction is not None:
        return _lr_at_fraction(min(max(fraction, 0.0), 1.0), t)
    if step < t.warmup_iters:  # linear warmup from lr/warmup to lr
        return t.lr * (step + 1) / t.warmup_iters
    if t.schedule == "wsd":
        return _stable_then_decay(step / max(1, t.max_iters), t)
    span = max(1, t.max_iters - t.warmup_iters)
    return _cosine(min(1.0, (step - t.warmup_iters) / span), t)


def _lr_at_fraction(f: float, t: TrainConfig) -> float:
    """The schedule over a time budget, `f` of it spent: warmup from 0, then cosine or wsd."""
    warmup = min(1.0, t.warmup_iters / t.max_iters) if t.max_iters else 0.0
    if f < warmup:
        return t.lr * f / warmup
    if t.schedule == "wsd":
        return _stable_then_decay(f, t)
    return _cosine((f - warmup) / (1.0 - warmup) if warmup < 1.0 else 1.0, t)


def _cosine(progress: float, t: TrainConfig) -> float:
    """Half a cosine from lr (progress 0) down to min_lr (progress 1)."""
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


def _stable_then_decay(f: float, t: TrainConfig) -> float:
    """wsd after its warmup: lr held constant, then a straight line to min_lr over the last
    `decay_fraction` of the run (`f`: the share of the run done). A long stable phase at the peak
    rate, and a short cool-down that can be started from any checkpoint of it."""
    start = 1.0 - t.decay_fraction
    if f <= start:
        return t.lr
    return t.lr - (t.lr - t.min_lr) * min(1.0, (f - start) / t.decay_fraction)


def make_optimizer(
    model: torch.nn.Module, t: TrainConfig, device: torch.device, *, fused: bool = True
) -> Optimizer:
    """AdamW with weight decay on 2-D weights only (matrices and embeddings, not biases or norms);
    with train.optimizer="muon" (or "normuon"), Muon (NorMuon) for the blocks' matrices and that AdamW
    for the rest: the embeddings, the output layer, the gains and the biases (`MuonAdamW`,
    psyduck/train/muon.py).

    With `fused` (the default), the fused implementation runs one kernel for all parameters where
    PyTorch has it, much faster on CPUs than the loop over parameters (docs/performance.md ("Training steps (the train package)"));
    `fused=False` is PyTorch's default AdamW, the benchmark's `default_adamw` lever.
    """
    hidden = hidden_matrices(model) if t.optimizer in ("muon", "normuon") else []
    muon_ids = {id(p) for p in hidden}
    adamw = _adamw([p for p in model.parameters() if p.requires_grad and id(p) not in muon_ids], t, device, fused)
    return MuonAdamW(make_muon(hidden, t), adamw) if hidden else adamw


def _adamw(params: list[torch.nn.Parameter], t: TrainConfig, device: torch.device, fused: bool) -> torch.optim.AdamW:
    """AdamW over `params`: one group of 2-D weights with train.weight_decay, one without decay."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"lr": t.lr, "betas": (t.beta1, t.beta2)}
    if fused and device.type in ("cuda", "cpu", "mps"):
        kwargs["fused"] = True
    try:
        return torch.optim.AdamW(groups, **kwargs)
    except (RuntimeError, TypeError):
        kwargs.pop("fused", None)
        return torch.optim.AdamW(groups, **kwargs)


def _disabled_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", enabled=False)


@dataclass
class StepSetup:
    """What every optimizer step of a run shares, built once by the trainer (or a benchmark)."""

    net: torch.nn.Module  # what runs forward: the model, maybe compiled and/or wrapped in DDP
    model: torch.nn.Module  # the bare model: its parameters are the ones clipped
    optimizer: Optimizer
    train: TrainConfig  # batch_size (rows per micro-batch) and grad_clip
    accum: int = 1  # micro-batches per step in this process
    autocast: AbstractContextManager[Any] = field(default_factory=nullcontext)
    scaler: torch.amp.GradScaler = field(default_factory=_disabled_scaler)  # enabled for float16 only
    loss: OutputLoss = plain_loss  # the output layer + loss, as train.loss names it (losses.make_loss)
    ranks: Distributed = field(default_factory=Distributed)  # the processes sharing each step


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """The schedule's rate for this step, in every parameter group (times the group's `lr_scale`:
    Muon's peak rate is its own, train.muon_lr, and follows the same schedule)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def train_step(setup: StepSetup, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
    """One optimizer step at learning rate `lr` on this process's batch: `accum * batch_size` rows.

    Returns the mean loss of the micro-batches (averaged over all processes). When it, or the
    gradient norm, is not finite, the weights and AdamW's moments are left untouched and the value
    comes back as it is (nan or inf) for the caller to act on.
    """
    set_lr(setup.optimizer, lr)
    value = accumulate_gradients(setup, x, y)
    if not clip_gradients(setup):
        value = float("nan")  # a finite loss with a broken gradient is a blow-up too
    if not math.isfinite(value):
        setup.optimizer.zero_grad(set_to_none=True)
        return value
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    setup.optimizer.zero_grad(set_to_none=True)
    return value


def accumulate_gradients(setup: StepSetup, x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward and backward each micro-batch, summing gradients; returns the mean loss."""
    rows, accum = setup.train.batch_size, setup.accum
    total = torch.zeros((), device=x.device)
    for micro in range(accum):
        sl = slice(micro * rows, (micro + 1) * rows)
        sync: AbstractContextManager[Any] = nullcontext()
        if setup.ranks.enabled and micro < accum - 1:
            sync = setup.net.no_sync()  # only the last micro-batch all-reduces gradients
        with sync, setup.autocast:
            _, loss = setup.net(x[sl], y[sl], loss=setup.loss)
        setup.scaler.scale(loss / accum).backward()
        total += loss.detach().float()
    total /= accum
    setup.ranks.average(total)
    return total.item()


def clip_gradients(setup: StepSetup) -> bool:
    """Clip the global gradient norm to `grad_clip` (when set); False when that norm is not finite.

    Under float16 loss scaling an infinite norm is routine (the scaler then skips the step and
    lowers its scale), so it only counts as a blow-up in the other precisions.
    """
    if setup.train.grad_clip <= 0:
        return True
    setup.scaler.unscale_(setup.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(setup.model.parameters(), setup.train.grad_clip)
    return math.isfinite(float(norm)) or setup.scaler.is_enabled()


def is_out_of_memory(e: BaseException) -> bool:
    """A GPU's out-of-memory error (torch.OutOfMemoryError; torch.cuda's name also works on torch 2.4),
    or a CPU allocation that failed."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(e)


def out_of_memory_advice(t: TrainConfig, device: torch.device, tokens_per_step: int, last: Path | None) -> str:
    """What to change when a step does not fit: half the micro-batch, twice the accumulation (the
    same step, in smaller pieces), or, at one row, a smaller model."""
    if t.batch_size > 1:
        fix = (f"train.batch_size={t.batch_size // 2} train.grad_accum={t.grad_accum * 2} "
               f"(the same {tokens_per_step:,} tokens per step)")
    else:
        fix = "a smaller model (model.d_model, model.n_layer) or context (model.block_size)"
    where = f"; last checkpoint: {last}" if last is not None else ""
    return f"out of memory on {device} at train.batch_size={t.batch_size}; try {fix}{where}"
