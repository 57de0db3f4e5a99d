"""Token log-probabilities in OpenAI's two shapes: the legacy completions one and the chat one.

Both report, per token, its log-probability under the model (the raw distribution: before
temperature, top-k and top-p, as vLLM does) and the most likely alternatives at that position.

- completions (`logprobs: k`): four parallel lists, `tokens`, `token_logprobs`, `top_logprobs`
  (dicts text -> logprob) and `text_offset` (where each token starts in the choice's text). With
  `echo`, the prompt's tokens come first; the very first has no logprob (null), as nothing
  predicts it. This is what lm-evaluation-harness's `local-completions` reads.
- chat (`logprobs: true, top_logprobs: k`): `{"content": [{token, logprob, bytes, top_logprobs}]}`.

A token's text is its own decoding, so one that holds part of a multi-byte character shows as
U+FFFD (and `bytes`, chat's, are that text's UTF-8 bytes).
"""

from __future__ import annotations

from typing import Any

from psyduck.serve.batch import TokenLogprob
from psyduck.tokenizer import Tokenizer


def legacy(tok: Tokenizer, scored: list[TokenLogprob | None], prompt: list[int] | None = None) -> dict[str, Any]:
    """Completions' shape for `scored` tokens; with `prompt` (echo), its ids pair with `scored`'s first
    entries, which may be None (the first prompt token). Offsets count from the choice's text start."""
    ids = list(prompt or []) + [s.token for s in scored[len(prompt or []) :] if s is not None]
    tokens, offsets, offset = [], [], 0
    for i in ids:
        offsets.append(offset)
        tokens.append(tok.decode([i]))
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [None if s is None else s.logprob for s in scored],
        "top_logprobs": [None if s is None else {tok.decode([t]): lp for t, lp in s.top} for s in scored],
        "text_offset": offsets,
    }


def chat(tok: Tokenizer, scored: list[TokenLogprob]) -> dict[str, Any]:
    """Chat's shape: {"content": [one entry per token, with its alternatives]}."""
    return {"content": [
        {**entry(tok, s.token, s.logprob), "top_logprobs": [entry(tok, t, lp) for t, lp in s.top]} for s in scored
    ]}


def entry(tok: Tokenizer, token: int, logprob: float) -> dict[str, Any]:
    text = tok.decode([token])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
