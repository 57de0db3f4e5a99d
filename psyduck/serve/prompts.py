"""A request's prompt(s) as token ids, with the server's limits checked before the work is done.

A prompt may be text, several texts, token ids or several lists of ids (OpenAI's four shapes).
Tokenizing a text costs time in proportion to its length, so a 10 MB prompt would keep a worker
busy for seconds only to be refused for being longer than the context. It is refused first, by
arithmetic: no token of the vocabulary stands for more than `state.token_chars` characters, so a
text of `c` characters needs at least `c / token_chars` tokens, whatever the tokenizer does with it.
Only texts that may fit are tokenized (and the caller runs this in a worker thread, never on the
event loop).
"""

from __future__ import annotations

import math
from typing import Any

from psyduck.serve.errors import ApiError
from psyduck.serve.state import ServeState


def too_long(state: ServeState, tokens: int, at_least: bool = False) -> ApiError:
    """The error for a prompt of `tokens` tokens (or, `at_least`, no fewer) over the server's limit."""
    size = f"at least {tokens}" if at_least else str(tokens)
    return ApiError(
        400, f"the prompt is {size} tokens long; this server accepts at most {state.max_prompt_tokens}",
        param="prompt", code="context_length_exceeded",
    )


def encode_text(state: ServeState, text: str) -> list[int]:
    """One text prompt's ids; "" starts a new document (end-of-text). Too long: refused untokenized."""
    if not text:
        return [state.tok.eot_id]
    fewest = math.ceil(len(text) / state.token_chars)
    if fewest > state.max_prompt_tokens:
        raise too_long(state, fewest, at_least=True)
    return state.tok.encode(text)


def encode_prompts(state: ServeState, prompt: Any) -> list[list[int]]:
    """The request's prompt(s) as token-id lists, each checked against the vocabulary and the limit."""
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and all(isinstance(x, int) for x in prompt):
        items = [prompt]  # one prompt given as token ids
    else:
        items = list(prompt)
    if not items:
        raise ApiError(400, "prompt is an empty list; give at least one prompt", param="prompt")
    out = []
    for item in items:
        if isinstance(item, str):
            ids = encode_text(state, item)
        else:
            ids = list(item)
            if not ids:
                raise ApiError(400, "a token-id prompt is empty; give at least one id", param="prompt")
            bad = next((i for i in ids if not 0 <= i < state.tok.vocab_size), None)
            if bad is not None:
                raise ApiError(400, f"token id {bad} is outside the vocabulary (0..{state.tok.vocab_size - 1})", param="prompt")
        if len(ids) > state.max_prompt_tokens:
            raise too_long(state, len(ids))
        out.append(ids)
    return out
