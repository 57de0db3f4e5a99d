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

LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,). The knobs are `GenerationParams`' (already checked there).

    `uniform` (B, 1): the rows' random numbers, drawn in advance with `draw_uniforms` (a server's
    batch draws each request's rows from that request's own generator, then samples all rows at
    once); by default they are drawn here from `generator`. Greedy decoding draws none."""
    # Work in bits (base-2 logits: x * log2(e) / T): exp2 is about twice as fast as exp on CPUs, and
    # the scaling is the one pass over the logits that the temperature's division costs anyway.
    logits = logits.float()
    if temperature < MIN_TEMPERATURE:  # 0 means greedy; a vanishing temperature would overflow the division
        return logits.max(dim=-1).indices  # argmax's answer (the first of equal maxima), ~2x faster on CPUs
    bits = logits * (LOG2E / temperature)  # a copy, ours to overwrite below: a vocabulary-wide batch is megabytes
    if top_k is not None and top_k < bits.shape[-1]:
        kth = torch.topk(bits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest score
        bits.masked_fill_(bits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        top_p = max(top_p, MIN_TOP_P)
        sorted_bits, order = torch.sort(bits, descending=True, dim=-1)
        probs = F.softmax(sorted_bits * LN2, dim=-1)  # back to natural units for softmax
        drop = probs.cumsum(dim=-1) - probs >= top_p  # tokens entirely beyond the nucleus
        drop[..., 0] = False  # the most likely token is always in (top_p may underflow to 0 in float32)
        bits = torch.full_like(bits, float("-inf")).scatter_(-1, order, sorted_bits.masked_fill_(drop, float("-inf")))
    # softmax without the division: the draw below scales by each row's total
    weights = bits.sub_(bits.amax(dim=-1, keepdim=True)).exp2_()
    return invert_cdf(weights.cumsum_(dim=-1), generator, uniform)


def draw_uniforms(rows: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (rows, 1) uniform numbers in [0, 1) that sampling `rows` rows takes from `generator`."""
    return torch.rand(rows, 1, device=device, generator=generator)


def sample_from(
    probs: torch.Tensor, generator: torch.Generator | None = None, uniform: torch.Tensor | None = None
) -> torch.Tensor:
    """Draw one token per row of `probs` (B, V; any non-negative weights) by inverting the running sum.

    One uniform number per row (`uniform`, else drawn from `generator`) scaled to u in (0, total];
    the token is the first whose running sum reaches u, so token i is drawn with probability
    probs[i] / total, and a token of probability 0 never (its running sum equals the previous one).
    Same distribution as `torch.multinomial`, which on CPUs draws and sorts and is many times slower
    for a vocabulary-wide row (docs/performance.md).
    """
    return invert_cdf(probs.cumsum(dim=-1), generator, uniform)


def invert_cdf(cdf: torch.Tensor, generator: torch.Generator | None = None, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """`sample_from` given the running sums (B, V) of the weights: the first token whose sum reaches u."""
    uniform = draw_uniforms(cdf.shape[0], generator, cdf.device) if uniform is None else uniform
    u = (1.0 - uniform) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1)
