"""How good is a model? Loss, perplexity and bits per byte on held-out text.

- loss: mean cross-entropy in nats per token, the number training minimizes;
- perplexity: exp(loss), "as unsure as a uniform choice among this many tokens";
- bits per byte: total information in bits divided by the UTF-8 bytes of the text. Unlike the two
  above, it does not depend on the tokenizer, so a cl100k_base model and an 8k-BPE model can be
  compared on it (bits/byte = loss / ln 2 * tokens / bytes).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch

from psyduck.data.loader import TokenData


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: TokenData,
    split: str = "val",
    batch_size: int = 16,
    max_batches: int | None = None,
    autocast: Any = None,
) -> dict[str, float]:
    """Mean loss over non-overlapping windows covering `split` (or its first `max_batches` batches)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    block_size = model.config.block_size
    total, count = 0.0, 0
    try:
        for x, y in data.iter_eval_batches(split, batch_size, block_size, max_batches):
            with autocast or nullcontext():
                _, loss = model(x.to(device), y.to(device))
            total += loss.item() * y.numel()
            count += y.numel()
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    tokens_per_byte = data.num_tokens(split) / max(data.num_bytes(split), 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": loss / math.log(2) * tokens_per_byte,
        "tokens": count,
    }
