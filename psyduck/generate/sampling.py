"""From logits to the next token.

The model gives a score (logit) for every token of the vocabulary; sampling turns them into a choice:
- temperature divides the logits: below 1 sharpens the distribution (safer, more repetitive text),
  above 1 flattens it (more surprising text); 0 means always take the most likely token (greedy);
- top-k keeps only the k most likely tokens;
- top-p (nucleus sampling, Holtzman et al. 2019, https://arxiv.org/abs/1904.09751) keeps the
  smallest set of most likely tokens whose probabilities add up to at least p.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from psyduck.generate.params import MIN_TEMPERATURE, MIN_TOP_P


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,). The knobs are `GenerationParams`' (already checked there)."""
    logits = logits.float()
    if temperature < MIN_TEMPERATURE:  # 0 means greedy; a vanishing temperature would overflow the division
        return logits.argmax(dim=-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest score
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        top_p = max(top_p, MIN_TOP_P)
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cum - F.softmax(sorted_logits, dim=-1) >= top_p  # tokens entirely beyond the nucleus
        drop[..., 0] = False  # the most likely token is always in (top_p may underflow to 0 in float32)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp_()  # softmax without the division:
    return sample_from(weights, generator)  # sample_from scales its uniform draw by each row's total


def sample_from(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row of `probs` (B, V; any non-negative weights) by inverting the running sum.

    One uniform number u per row, in (0, total]; the token is the first whose running sum reaches
    u, so token i is drawn with probability probs[i] / total, and a token of probability 0 never
    (its running sum equals the previous one). Same distribution as `torch.multinomial`, which on
    CPUs draws and sorts and is many times slower for a vocabulary-wide row (docs/performance.md).
    """
    cdf = probs.cumsum(dim=-1)
    u = (1.0 - torch.rand(probs.shape[0], 1, device=probs.device, generator=generator)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1)
