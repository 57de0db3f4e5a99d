"""POST /v1/completions: prompt -> continuation, whole or streamed, with logprobs and echo.

OpenAI's legacy completions API, which evaluation tools still speak: with `echo: true` and
`logprobs: k` the answer carries the prompt's own token log-probabilities (and `max_tokens: 0`
asks for nothing else), which is how lm-evaluation-harness's `local-completions` scores
multiple-choice and perplexity tasks. Streamed: one event per generated token (its text may be
empty while a multi-byte character or a possible stop string is incomplete, so counting events
counts tokens), then `usage` if asked for, then `data: [DONE]`.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from psyduck.serve import logprobs
from psyduck.serve.access import AUTH, State, check_model
from psyduck.serve.batch import Choice, Delta, Job, TokenLogprob
from psyduck.serve.engine import ClientGone
from psyduck.serve.errors import ApiError
from psyduck.serve.generation import (
    EventStream,
    events,
    gone,
    run_whole,
    sampling_params,
    sse,
    start,
    streamed_job,
)
from psyduck.serve.prompts import encode_prompts
from psyduck.serve.schemas import ERRORS, MAX_N, CompletionRequest, CompletionResponse
from psyduck.serve.state import ServeState

router = APIRouter()


@dataclass
class Reply:
    """What every response to one request shares: its id and time, the echoed prompts, their length."""

    meta: dict[str, Any]  # id, object, created, model: the top of every response and every event
    tok: Any  # the tokenizer (token texts for logprobs)
    prompts: list[list[int]]  # per choice: the prompt it continues
    echo: list[str]  # per choice: the prompt's text if `echo`, else ""
    n: int  # choices per prompt
    logprobs: int | None
    prompt_tokens: int

    def usage(self, choices: list[Choice]) -> dict[str, int]:
        done = sum(c.tokens for c in choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done, "total_tokens": self.prompt_tokens + done}

    def choice(self, index: int, text: str, finish_reason: str | None, scored: list[TokenLogprob], job: Job | None = None) -> dict[str, Any]:
        """One choice's JSON; with `job` (whole answer, echo event) its prompt's scores come first, if any."""
        lp = None
        if self.logprobs is not None:
            if job is not None and job.prompt_scores:
                lp = logprobs.legacy(self.tok, job.prompt_scores[index // self.n] + scored, self.prompts[index])
            else:
                lp = logprobs.legacy(self.tok, scored)
        return {"text": text, "index": index, "logprobs": lp, "finish_reason": finish_reason}

    def whole(self, choices: list[Choice], job: Job) -> dict[str, Any]:
        chosen = [self.choice(c.index, self.echo[c.index] + c.text, c.finish_reason, c.logprobs, job) for c in choices]
        return {**self.meta, "choices": chosen, "usage": self.usage(choices)}

    def event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        """One server-sent event of a streamed response."""
        return sse({**self.meta, "choices": choices, **extra})


def read_prompts(state: ServeState, body: CompletionRequest, n: int) -> tuple[list[list[int]], Reply]:
    """The prompts as ids (and, for `echo`, as text and scored tokens), checked against the limits."""
    prompts = encode_prompts(state, body.prompt)
    if len(prompts) * n > MAX_N:
        raise ApiError(400, f"{len(prompts)} prompts x n={n} asks for more than {MAX_N} completions", param="n")
    echo = bool(body.echo)
    if echo and body.logprobs is not None and max(map(len, prompts)) > state.model.config.block_size + 1:
        raise ApiError(
            400, f"echo with logprobs scores at most {state.model.config.block_size + 1} tokens (the model's context "
            "and the token after it); send a shorter prompt", param="prompt", code="context_length_exceeded",
        )
    meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()), "model": state.name}
    reply = Reply(
        meta, state.tok, [p for p in prompts for _ in range(n)], [state.tok.decode(p) if echo else "" for p in prompts for _ in range(n)],
        n, body.logprobs, sum(map(len, prompts)),
    )
    return prompts, reply


@router.post(
    "/v1/completions", response_model=CompletionResponse, dependencies=AUTH, tags=["openai"],
    responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def completions(body: CompletionRequest, request: Request, state: State) -> Response:
    check_model(state, body.model)
    params = sampling_params(state, body.max_tokens, body)
    n = body.n or 1
    prompts, reply = await run_in_threadpool(read_prompts, state, body, n)  # off the event loop: long texts take time
    if not body.stream:
        job = Job(prompts, n, params, threading.Event(), logprobs=body.logprobs, score_prompts=bool(body.echo))
        choices = await run_whole(request, state, job)
        return gone() if choices is None else JSONResponse(reply.whole(choices, job))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    job, queue = streamed_job(prompts, n, params, body.logprobs, score_prompts=bool(body.echo), interval=state.stream_interval)
    try:
        await start(request, state, job)
    except ClientGone:
        return gone()

    def event(deltas: list[Delta]) -> str:
        return "".join(reply.event([reply.choice(d.index, d.text, d.finish_reason, d.logprobs)]) for d in deltas)

    def done(choices: list[Choice]) -> str:
        return reply.event([], usage=reply.usage(choices)) if include_usage else ""

    async def stream() -> Any:
        first = None
        if any(reply.echo):  # after the job joined the batch (its first item), when its prompts are scored
            first = await queue.get()
            yield "".join(reply.event([reply.choice(i, text, None, [], job)]) for i, text in enumerate(reply.echo))
        async for chunk in events(queue, event, done, first):
            if chunk:
                yield chunk

    return EventStream(stream(), on_close=job.cancel.set)
