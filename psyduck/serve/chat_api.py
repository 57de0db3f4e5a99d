"""POST /v1/chat/completions: a conversation in, the assistant's reply out (whole or streamed).

The run's chat template (psyduck.chat) writes the messages as tokens and opens the assistant's
turn; the reply is generated like a completion and ends at the end-of-text token, at one of the
template's stop strings (where the model would start the next turn), at the request's own, or
after `max_completion_tokens` (default: the server's cap, since chat clients rarely set it).
A base model without a template gets the plain, documented one. The message is the template's
`reply` of the generated text (the plain template's "Assistant:" leaves its space to the model,
and the reply drops it), as `psyduck chat` shows it; streamed, through a `ReplyStream` per choice,
so the chunks add up to the whole answer's message. Streamed, each choice first gets
a chunk with `delta: {role: "assistant"}`, then one chunk per token with `delta: {content}`, the
last with its `finish_reason`; then `usage` if asked for, then `data: [DONE]`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from psyduck.chat import ReplyStream
from psyduck.errors import PsyDuckError
from psyduck.serve import logprobs
from psyduck.serve.access import AUTH, State, check_model
from psyduck.serve.batch import Choice, Delta, Job
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
from psyduck.serve.schemas import ERRORS, ChatRequest
from psyduck.serve.state import ServeState

router = APIRouter()


def encode_messages(state: ServeState, messages: list[Any]) -> list[int]:
    """The conversation as ids (template applied), refused (400) if bad or longer than the limit."""
    try:
        state.template.render(messages)  # checks the messages before any tokenizing
    except PsyDuckError as e:
        raise ApiError(400, str(e), param="messages") from None
    chars = sum(len(m["content"]) for m in messages)
    fewest = math.ceil(chars / state.token_chars)
    ids = [] if fewest > state.max_prompt_tokens else state.template.encode(state.tok, messages)
    if fewest > state.max_prompt_tokens or len(ids) > state.max_prompt_tokens:
        size = f"at least {fewest}" if not ids else str(len(ids))
        raise ApiError(
            400, f"the conversation is {size} tokens long; this server accepts at most {state.max_prompt_tokens}: "
            "send fewer or shorter messages", param="messages", code="context_length_exceeded",
        )
    return ids


@router.post(
    "/v1/chat/completions", dependencies=AUTH, tags=["openai"],
    responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def chat_completions(body: ChatRequest, request: Request, state: State) -> Response:
    check_model(state, body.model)
    wanted = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    wanted = state.max_tokens_cap if wanted is None else wanted  # a reply runs to its end, as chat clients expect
    params = sampling_params(state, wanted, body, "max_completion_tokens")
    params = dataclasses.replace(params, stop=params.stop + state.template.stop_strings)
    n = body.n or 1
    top = (body.top_logprobs or 0) if body.logprobs else None
    prompt = await run_in_threadpool(encode_messages, state, body.messages)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": state.name}

    def usage(choices: list[Choice]) -> dict[str, int]:
        done = sum(c.tokens for c in choices)
        return {"prompt_tokens": len(prompt), "completion_tokens": done, "total_tokens": len(prompt) + done}

    def scored(lp: list) -> dict[str, Any] | None:
        return logprobs.chat(state.tok, lp) if top is not None else None

    if not body.stream:
        job = Job([prompt], n, params, threading.Event(), logprobs=top)
        choices = await run_whole(request, state, job)
        if choices is None:
            return gone()
        return JSONResponse({**meta, "object": "chat.completion", "usage": usage(choices), "choices": [
            {"index": c.index, "message": {"role": "assistant", "content": state.template.reply(c.text)},
             "logprobs": scored(c.logprobs),
             "finish_reason": c.finish_reason} for c in choices
        ]})
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    job, queue = streamed_job([prompt], n, params, top, interval=state.stream_interval)
    try:
        await start(request, state, job)
    except ClientGone:
        return gone()
    chunk = {**meta, "object": "chat.completion.chunk"}
    replies = [ReplyStream(state.template) for _ in range(n)]

    def event(deltas: list[Delta]) -> str:
        return "".join(sse({**chunk, "choices": [
            {"index": d.index, "delta": {"content": replies[d.index].push(d.text, last=d.finish_reason is not None)},
             "logprobs": scored(d.logprobs), "finish_reason": d.finish_reason}
        ]}) for d in deltas)

    def done(choices: list[Choice]) -> str:
        return sse({**chunk, "choices": [], "usage": usage(choices)}) if include_usage else ""

    async def stream() -> Any:
        yield "".join(sse({**chunk, "choices": [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ]}) for i in range(n))
        async for piece in events(queue, event, done):
            if piece:
                yield piece

    return EventStream(stream(), on_close=job.cancel.set)
