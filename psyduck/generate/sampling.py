"""From logits to the next token.

The model gives a score (logit) for every token of the vocabulary; sampling turns them into a choice:
- temperature divides the logits: below 1 sharpens the distribution (safer, more repetitive text),
  above 1 flattens it (more surprising text); 0 means always take the most likely token (greedy);
- top-k keeps only the k most likely tokens;
- top-p (nucleus sampling, Holtzman et al. 2019, https://arxiv.org/abs/1904.09751) keeps the
  smallest set of most likely tokens whose probabilities add up to at least p.

The draw itself inverts the running sum of the weights. For many rows of a wide vocabulary (a
server's 16-row step, two rows or more of a 100k vocabulary) it searches in two levels: the totals
of blocks of BLOCK tokens, then the running sum inside the one block u falls in, so the sequential
full-width running sum (~1 ns a weight on a CPU) is not paid (docs/performance.md, "Sampling").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from psyduck.generate.params import MIN_TEMPERATURE, MIN_TOP_P

LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
BLOCK = 128  # tokens per block of the two-level draw
BLOCKED_MIN = 1 << 17  # weights (rows x vocabulary) from which the two-level draw is used: below,
# one running sum costs less than its ~15 small operations (16 x 8,192 is the first size it wins at)


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
    if weights.numel() >= BLOCKED_MIN:
        return draw_blocked(weights, generator, uniform)
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
    for a vocabulary-wide row (docs/performance.md). Large inputs take `draw_blocked`: the same
    draw, its sums taken in another order (the same token but where u falls within rounding of a
    boundary).
    """
    if probs.numel() >= BLOCKED_MIN:
        return draw_blocked(probs, generator, uniform)
    return invert_cdf(probs.cumsum(dim=-1), generator, uniform)


def invert_cdf(cdf: torch.Tensor, generator: torch.Generator | None = None, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """`sample_from` given the running sums (B, V) of the weights: the first token whose sum reaches u."""
    uniform = draw_uniforms(cdf.shape[0], generator, cdf.device) if uniform is None else uniform
    u = (1.0 - uniform) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1)


def draw_blocked(weights: torch.Tensor, generator: torch.Generator | None = None, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """`sample_from`'s draw in two levels (weights (B, V) non-negative, left unchanged): the first
    block of BLOCK tokens whose running total reaches u, then the first token inside it whose
    running sum reaches what is left of u.

    Never a token of weight 0: u exceeds the totals before its block, so what is left is positive
    and a token that adds nothing never reaches it first; rounding can leave it above the block's
    own running sum, so it is capped there (the block's last token of positive weight). A last,
    shorter block (V not a multiple of BLOCK) is read as if padded with zeros."""
    uniform = draw_uniforms(weights.shape[0], generator, weights.device) if uniform is None else uniform
    rows, vocab = weights.shape
    full = vocab // BLOCK
    ragged = full * BLOCK < vocab  # a last, shorter block
    sums = weights[:, : full * BLOCK].view(rows, full, BLOCK).sum(-1)  # (B, blocks)
    if ragged:
        sums = torch.cat([sums, weights[:, full * BLOCK :].sum(-1, keepdim=True)], dim=1)
    totals = sums.cumsum_(dim=-1)
    u = (1.0 - uniform) * totals[:, -1:]  # (B, 1) in (0, total]
    block = torch.searchsorted(totals, u).clamp_(max=totals.shape[1] - 1)  # the clamp only guards against NaN
    before = F.pad(totals, (1, 0)).gather(1, block)  # the totals of the blocks before it (< u)
    index = block * BLOCK + torch.arange(BLOCK, device=weights.device)  # (B, BLOCK) its tokens
    if ragged:
        inside = weights.gather(1, index.clamp(max=vocab - 1)).masked_fill_(index >= vocab, 0.0)
    else:
        inside = weights.gather(1, index)
    running = inside.cumsum_(dim=-1)
    left = torch.minimum(u - before, running[:, -1:])
    return index.gather(1, torch.searchsorted(running, left).clamp_(max=BLOCK - 1)).squeeze(-1)
