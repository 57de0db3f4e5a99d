"""Running a generation for a request: sampling parameters, a slot, the job, and its answer.

Shared by /v1/completions and /v1/chat/completions. `start` waits for a slot (admission control,
engine.py) and submits a `Job` (batch.py); `finish_whole` waits for a whole answer, `events` turns
the job's deltas into server-sent events. A client that disconnects, streaming or not, sets its
job's cancel flag: its rows leave the batch at the next step and the slot goes to the next in line.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from psyduck.errors import PsyDuckError
from psyduck.generate import GenerationParams
from psyduck.serve.batch import Choice, Delta, Job
from psyduck.serve.engine import ClientGone, Overloaded
from psyduck.serve.errors import ApiError, error_body
from psyduck.serve.pacing import Paced
from psyduck.serve.state import ServeState


def sampling_params(
    state: ServeState, max_tokens: int | None, body: Any, param: str = "max_tokens"
) -> GenerationParams:
    """Check what the schema cannot (the server's cap) and fill in the defaults (`body`: either request)."""
    max_tokens = min(16, state.max_tokens_cap) if max_tokens is None else max_tokens
    if max_tokens > state.max_tokens_cap:
        raise ApiError(
            400, f"{param} is {max_tokens}, above this server's cap of {state.max_tokens_cap}",
            param=param, code="max_tokens_too_large",
        )
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    top_k = body.top_k if body.top_k is not None and body.top_k > 0 else None
    top_p = body.top_p if body.top_p is not None and body.top_p < 1 else None
    temperature = 1.0 if body.temperature is None else body.temperature
    return GenerationParams(
        max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=body.seed, stop=stop,
        ignore_eos=bool(body.ignore_eos),
    )


async def start(request: Request, state: ServeState, job: Job) -> None:
    """Wait for a slot (429 when the line is full), then submit `job`; the slot returns when it ends.

    Raises engine.ClientGone if the client leaves while waiting."""
    try:
        await state.slots.acquire(request.is_disconnected)
    except Overloaded:
        raise ApiError(
            429, f"the server is busy ({state.slots.active} generations running, {state.slots.waiting} waiting); retry shortly",
            type="server_error", code="server_overloaded", headers={"Retry-After": "1"},
        ) from None
    loop = asyncio.get_running_loop()
    state.cancels.add(job.cancel)

    def finish(_future: Future | None = None) -> None:
        state.cancels.discard(job.cancel)
        state.slots.release()

    try:
        state.submit(job)
    except BaseException:
        finish()
        raise
    job.future.add_done_callback(lambda f: threadsafe(loop, finish, f))


async def run_whole(request: Request, state: ServeState, job: Job) -> list[Choice] | None:
    """Start `job` and wait for all its choices; None if the client left first (answer `gone()`)."""
    try:
        await start(request, state, job)
    except ClientGone:
        return None
    return await finish_whole(request, job)


async def finish_whole(request: Request, job: Job) -> list[Choice] | None:
    """The job's choices once all are done; None if the client hung up first (generation stops)."""
    result = asyncio.wrap_future(job.future)
    try:
        while not (await asyncio.wait({result}, timeout=0.25))[0]:
            if await request.is_disconnected():  # nobody to answer: stop generating
                return None
    finally:
        if not result.done():
            job.cancel.set()
    try:
        return result.result()
    except (PsyDuckError, ValueError) as e:
        raise ApiError(400, str(e)) from None


def streamed_job(
    prompts: list[list[int]], n: int, params: GenerationParams, logprobs: int | None, score_prompts: bool = False,
    *, interval: float,
) -> tuple[Job, asyncio.Queue]:
    """A job whose deltas (lists of `Delta`, merged over at most `interval` seconds: pacing.py), then
    its finished Future, arrive on the returned queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    paced = Paced(lambda item: threadsafe(loop, queue.put_nowait, item), interval)
    job = Job(prompts, n, params, threading.Event(), paced.push, logprobs, score_prompts)
    job.future.add_done_callback(paced.close)
    return job, queue


async def events(
    queue: asyncio.Queue, event: Callable[[list[Delta]], str], done: Callable[[list[Choice]], str], first: Any = None,
) -> AsyncIterator[str]:
    """The job's deltas as events (`event`), then `done(choices)` and `data: [DONE]`. An error after
    the stream began is its last event. `first`: an item the caller already took from the queue."""
    item = first if first is not None else await queue.get()
    while not isinstance(item, Future):
        yield event(item)
        item = await queue.get()
    error = item.exception()
    if error is not None:
        kind = "invalid_request_error" if isinstance(error, (PsyDuckError, ValueError)) else "server_error"
        yield "data: " + json.dumps(error_body(str(error), kind)) + "\n\n"
    else:
        yield done(item.result())
    yield "data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event."""
    return "data: " + json.dumps(payload) + "\n\n"


def threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Call `fn(*args)` in the event loop's thread, unless the loop is gone (the server stopped)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


class EventStream(StreamingResponse):
    """Server-sent events that call `on_close` however the response ends (done, error, disconnect)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def gone() -> Response:
    """The answer to a client that left before its answer was ready: nobody reads it."""
    return Response(status_code=499)
