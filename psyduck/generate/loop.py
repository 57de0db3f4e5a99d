"""The decode loop: a prompt in, one new token per step out, through a KV cache.

    from psyduck.generate import GenerationParams, generate, stream
    out = generate(model, idx, GenerationParams(max_new_tokens=100, temperature=0.7, top_k=50))  # (B, T + n)
    for token in stream(model, idx, max_new_tokens=20):   # (B,) per step; knobs as keywords work too
        ...

The prompt runs once; then each step feeds only the newest token, reusing every earlier key and
value (`KVCache`). When the window of block_size tokens is full, the oldest half is dropped and the
cache is rebuilt from the rest (the seed cropped the context the same way, but re-ran all of it for
every token). On CPUs the matrix products use the copies of `DecodeWeights`, built once per
generation unless the caller passes some in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from psyduck.errors import PsyDuckError
from psyduck.generate.cache import KVCache
from psyduck.generate.decode_weights import DecodeWeights
from psyduck.generate.params import GenerationParams
from psyduck.generate.sampling import sample_next
from psyduck.model import GPT


def next_logits(
    model: GPT, weights: DecodeWeights, tokens: torch.Tensor, cache: KVCache
) -> tuple[torch.Tensor, DecodeWeights]:
    """New tokens (B, T) through the cache -> the last position's logits (B, V), and the weights to
    use from now on: if float16 overflowed (logits not finite), the step is redone once with exact
    weights, which the rest of the generation keeps."""
    start = cache.length
    with torch.inference_mode():  # no autograd bookkeeping at all
        logits = weights.net(tokens, cache=cache)[0][:, -1]
        if weights.half and not bool(logits.sum().isfinite()):  # float16 copies are CPU-only: no GPU sync
            cache.length = start  # forget this step's keys and values
            weights = DecodeWeights.build(model, exact=True)
            logits = weights.net(tokens, cache=cache)[0][:, -1]
    return logits, weights


@torch.no_grad()
def stream(
    model: GPT,
    idx: torch.Tensor,
    params: GenerationParams | None = None,
    *,
    eot_id: int | None = None,
    weights: DecodeWeights | None = None,
    **knobs: Any,
) -> Iterator[torch.Tensor]:
    """Yield one new token per step, a (B,) tensor, continuing each row of `idx` (B, T) or (T,).

    `params` (default `GenerationParams()`) with `knobs` applied (`max_new_tokens=20`, the seed's
    `max_new_token=20`, ...). Rows that produce `eot_id` stop (unless params.ignore_eos) and are
    padded with it; the stream ends when all rows have. Prompts longer than the window are cropped
    to its last block_size tokens, as the seed does. `weights`: from `DecodeWeights.build(model,
    params.exact)`, for callers that generate many times from unchanged weights (a server).
    """
    params = (params or GenerationParams()).with_knobs(**knobs)
    idx = idx if idx.ndim == 2 else idx.unsqueeze(0)
    if idx.shape[1] == 0:
        raise PsyDuckError("generate needs at least one prompt token; start a new document with the end-of-text id")
    stop_id = None if params.ignore_eos else eot_id
    weights = weights if weights is not None else DecodeWeights.build(model, params.exact)
    bs = model.config.block_size
    generator = torch.Generator(device=idx.device).manual_seed(params.seed) if params.seed is not None else None
    cache = KVCache.for_model(model, idx.shape[0], idx.device, next(model.parameters()).dtype)
    context = idx[:, -bs:]  # crop prompts longer than the window, as the seed does
    logits, weights = next_logits(model, weights, context, cache)
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(params.max_new_tokens):
        nxt = sample_next(logits, params.temperature, params.top_k, params.top_p, generator)  # (B,)
        if stop_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, stop_id), nxt)
            done |= nxt == stop_id
        yield nxt
        if stop_id is not None and bool(done.all()):
            return
        context = torch.cat([context, nxt[:, None]], dim=1)
        if cache.length == bs:  # window full: keep the newest half, rebuild the cache from it
            context = context[:, -(bs // 2 + 1) :]
            cache.reset()
            logits, weights = next_logits(model, weights, context, cache)
        else:
            logits, weights = next_logits(model, weights, nxt[:, None], cache)


def generate(
    model: GPT,
    idx: torch.Tensor,
    params: GenerationParams | None = None,
    *,
    eot_id: int | None = None,
    weights: DecodeWeights | None = None,
    **knobs: Any,
) -> torch.Tensor:
    """Continue `idx` (B, T) or (T,) by up to max_new_tokens tokens: returns (B, T + n) ids, the
    prompt (uncropped) then the new tokens. Arguments as `stream`'s."""
    new = list(stream(model, idx, params, eot_id=eot_id, weights=weights, **knobs))
    idx = idx if idx.ndim == 2 else idx.unsqueeze(0)
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx.clone()
