"""How good is a model? Loss, perplexity and bits per byte on held-out text.

- loss: mean cross-entropy in nats per token, the number training minimizes;
- perplexity: exp(loss), "as unsure as a uniform choice among this many tokens";
- bits per byte: total information in bits divided by the UTF-8 bytes of the text. Unlike the two
  above, it does not depend on the tokenizer, so a cl100k_base model and an 8k-BPE model can be
  compared on it (bits/byte = loss / ln 2 * tokens / bytes).
- word perplexity (WikiText data only): exp(total NLL of the split / number of words), the number
  published WikiText results report, also independent of the tokenizer. Words are counted as in the
  dataset's papers: the whitespace-separated tokens of every line of the original text plus one
  end-of-line per line (WikiText-103 test: 245,569; see data/wikitext.py). Published WikiText-103
  test word perplexities for scale: GPT-2 small zero-shot 37.50 (Radford et al. 2019),
  Transformer-XL standard 24.0 (Dai et al. 2019).

Coverage: the total NLL sums over every token of the split exactly once (including the end-of-text
tokens between documents, and the first token, predicted from an end-of-text token), using
windows of the model's context length T. `stride` S (default T) slides them: each window scores only
its last S tokens, so every token after the first window sees at least T - S tokens of context.
S = T is fastest; a smaller S gives each token more context and a lower, fairer perplexity, at T / S
times the compute (https://huggingface.co/docs/transformers/perplexity).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch

from psyduck.data.loader import TokenData
from psyduck.errors import PsyDuckError
from psyduck.losses import FusedLoss


def check_batches(batch_size: int, max_batches: int | None) -> None:
    """Refuse a batch size or batch limit below 1 (0 batches would report a loss of 0 over 0 tokens)."""
    if batch_size < 1:
        raise PsyDuckError(f"--batch-size must be a positive integer, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise PsyDuckError(f"--max-batches must be a positive integer (leave it out for the whole split), got {max_batches}")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: TokenData,
    split: str = "val",
    batch_size: int = 16,
    max_batches: int | None = None,
    autocast: Any = None,
    stride: int | None = None,
    word_perplexity: bool = False,
) -> dict[str, float]:
    """Loss, perplexity and bits per byte of `model` over `split` (every token once, see above).

    `max_batches` stops early (an estimate; refused with `word_perplexity`, which needs the whole
    split). `word_perplexity=True` adds "words" and "word_perplexity" and needs WikiText data.
    """
    check_batches(batch_size, max_batches)
    block_size = model.config.block_size
    words = data.num_words(split) if word_perplexity else None  # refuses data without word counts
    if word_perplexity and max_batches is not None:
        raise PsyDuckError("word perplexity needs the whole split; drop --max-batches")
    if stride is not None and not 1 <= stride <= block_size:
        raise PsyDuckError(f"--stride must be between 1 and the model's context length {block_size}, got {stride}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    fused = FusedLoss()  # the loss block by block: never the (B, T, V) logits
    try:
        for x, y in data.iter_scored_windows(split, batch_size, block_size, stride, max_batches):
            scored = int((y != -1).sum())
            with autocast or nullcontext():
                _, loss = model(x.to(device), y.to(device), loss=fused)  # mean over scored targets
            total += loss.item() * scored
            count += scored
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    tokens_per_byte = data.num_tokens(split) / max(data.num_bytes(split), 1)
    result = {
        "loss": loss,
        "perplexity": exp_or_inf(loss),
        "bits_per_byte": loss / math.log(2) * tokens_per_byte,  # = total bits / bytes over the whole split
        "tokens": count,
    }
    if words is not None:
        result["words"] = words
        result["word_perplexity"] = exp_or_inf(total / words)
    return result


def exp_or_inf(x: float) -> float:
    """exp(x), or infinity for x above 709 (where float64 overflows, math.exp raises); NaN stays NaN."""
    return math.exp(x) if not x > 709.0 else math.inf
