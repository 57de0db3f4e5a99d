"""What an evaluation of a training run measures besides the benchmark scores: the mean train and
val loss over fixed batches, and a short text sample (both called by `Trainer.record_evaluation`)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from psyduck.config import TrainConfig
from psyduck.generate import GenerationParams, stream_text
from psyduck.losses import OutputLoss
from psyduck.tokenizer import Tokenizer


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module, data: Any, t: TrainConfig, block_size: int, step: int, device: torch.device,
    autocast: AbstractContextManager[Any], loss: OutputLoss,
) -> dict[str, float]:
    """Mean loss over `t.eval_iters` batches per split, drawn from a generator seeded by the step,
    so the estimate does not depend on whether the run was resumed. `data`: token shards or a
    fine-tuning feed's batches (anything with `get_batch(split, rows, block_size, generator)`)."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        g = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
        losses = []
        for _ in range(t.eval_iters):
            x, y = data.get_batch(split, t.batch_size, block_size, g)
            with autocast:
                _, value = model(x.to(device), y.to(device), loss=loss)
            losses.append(value.item())
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


def sample(model: torch.nn.Module, tokenizer: Tokenizer, prompt: tuple[str, list[int], tuple[str, ...]], t: TrainConfig) -> str:
    """A short continuation of `prompt` (its text, ids and stop strings), seeded by `t.seed`, so
    samples.txt shows the same draw improving from one evaluation to the next."""
    text, ids, stop = prompt
    params = GenerationParams(t.sample_tokens, 0.8, 50, seed=t.seed, stop=stop)
    return text + "".join(stream_text(model, tokenizer, ids, params))
