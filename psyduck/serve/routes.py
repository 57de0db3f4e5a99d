"""The routes, on one `APIRouter`: each handler reads the server's `ServeState` from `app.state`.

    GET  /v1/models, /v1/models/{id}   the one model this server holds (named after the run folder)
    POST /v1/completions               prompt -> continuation; `stream: true` for server-sent events
    POST /v1/chat/completions          not yet: a clear 404 in OpenAI's shape
    GET  /health                       liveness, plus how many generations run and wait
    GET  /api/info                     what the page needs to draw its controls (behind the key, if any)
    GET  /api/runs/{name}/metrics      the run's metrics.jsonl as JSON (the loss-curve tab polls it)
    GET  /, /runs/{name}               the playground and the loss curves (one self-contained page)

The state arrives through the `get_state` dependency, never as a closure variable, so every
handler and helper here is a plain function a test can call with a `ServeState` of its own.
Generation runs in a worker thread per request (engine.py); the event loop only moves bytes. A
client that disconnects, streaming or not, sets its request's cancel flag: generation stops within
one token and the slot goes to the next request in line. This module is the one place that
imports the generation side of engine.py.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from psyduck.errors import PsyDuckError
from psyduck.io import json_safe, read_jsonl
from psyduck.generate import GenerationParams
from psyduck.serve.engine import Choice, ClientGone, Delta, Overloaded, generate
from psyduck.serve.errors import ApiError, error_body
from psyduck.serve.prompts import encode_prompts
from psyduck.serve.schemas import (
    ERRORS, MAX_N, CompletionRequest, CompletionResponse, Health, Info, ModelCard, ModelList, RunMetrics,
)
from psyduck.serve.state import ServeState

PAGE_HEADERS = {  # the page loads nothing from elsewhere: it works offline, and this proves it
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter()


# -- state and access -------------------------------------------------------------------------

def get_state(request: Request) -> ServeState:
    """The app's `ServeState` (create_app puts it in `app.state.psyduck`)."""
    return request.app.state.psyduck


State = Annotated[ServeState, Depends(get_state)]
bearer = HTTPBearer(auto_error=False, description="only when the server was started with --api-key")


def check_key(state: State, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Refuse (401) a request without the server's API key, when it has one. Constant-time compare."""
    if state.api_key is None:
        return
    given = creds.credentials if creds is not None else ""
    if not hmac.compare_digest(given.encode("utf-8", "replace"), state.api_key.encode("utf-8")):
        raise ApiError(
            401, "missing or incorrect API key; send `Authorization: Bearer KEY` with the server's --api-key",
            code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
        )


AUTH = [Depends(check_key)]


def check_model(state: ServeState, requested: str | None) -> None:
    """A request may omit the model, or name the one served; any other name is a 404."""
    if requested is not None and requested != state.name:
        raise ApiError(
            404, f"the model {requested!r} does not exist; this server serves {state.name!r} (GET /v1/models)",
            param="model", code="model_not_found",
        )


# -- models, health, info ---------------------------------------------------------------------

def card(state: ServeState) -> ModelCard:
    return ModelCard(id=state.name, created=state.created)


@router.get("/v1/models", response_model=ModelList, dependencies=AUTH, responses=ERRORS, tags=["openai"])
async def list_models(state: State) -> ModelList:
    return ModelList(data=[card(state)])


@router.get("/v1/models/{model_id}", response_model=ModelCard, dependencies=AUTH, responses=ERRORS, tags=["openai"])
async def get_model(model_id: str, state: State) -> ModelCard:
    check_model(state, model_id)
    return card(state)


@router.get("/health", response_model=Health)
async def health(state: State) -> Health:
    return Health(model=state.name, active=state.slots.active, queued=state.slots.waiting)


@router.get("/api/info", response_model=Info, dependencies=AUTH, responses=ERRORS)
async def info(state: State) -> Info:
    return Info(
        model=state.name, run=state.run_name, auth=state.api_key is not None, max_tokens_cap=state.max_tokens_cap,
        max_prompt_tokens=state.max_prompt_tokens, block_size=state.model.config.block_size,
        parameters=state.model.num_params(), tokenizer=state.tok.name,
    )


# -- completions ------------------------------------------------------------------------------

def sampling_params(state: ServeState, body: CompletionRequest) -> GenerationParams:
    """Check what the schema cannot (the server's cap) and fill in the defaults."""
    max_tokens = min(16, state.max_tokens_cap) if body.max_tokens is None else body.max_tokens
    if max_tokens > state.max_tokens_cap:
        raise ApiError(
            400, f"max_tokens is {max_tokens}, above this server's cap of {state.max_tokens_cap}",
            param="max_tokens", code="max_tokens_too_large",
        )
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    top_k = body.top_k if body.top_k is not None and body.top_k > 0 else None
    top_p = body.top_p if body.top_p is not None and body.top_p < 1 else None
    temperature = 1.0 if body.temperature is None else body.temperature
    return GenerationParams(
        max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=body.seed, stop=stop,
        ignore_eos=bool(body.ignore_eos),
    )


@dataclass
class Reply:
    """What every response to one request shares: its id and time, the echoed prompts, their length."""

    meta: dict[str, Any]  # id, object, created, model: the top of every response and every event
    echoed: bool  # the request asked for `echo`
    echo: list[str]  # per choice: the prompt's text if `echo`, else ""
    prompt_tokens: int

    @classmethod
    def of(cls, state: ServeState, prompts: list[list[int]], n: int, echo: bool) -> Reply:
        meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()), "model": state.name}
        texts = [state.tok.decode(p) if echo else "" for p in prompts for _ in range(n)]
        return cls(meta, echo, texts, sum(map(len, prompts)))

    def usage(self, choices: list[Choice]) -> dict[str, int]:
        done = sum(c.tokens for c in choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done, "total_tokens": self.prompt_tokens + done}

    @staticmethod
    def choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}

    def event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        """One server-sent event of a streamed response."""
        return "data: " + json.dumps({**self.meta, "choices": choices, **extra}) + "\n\n"


@router.post(
    "/v1/completions", response_model=CompletionResponse, dependencies=AUTH, tags=["openai"],
    responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def completions(body: CompletionRequest, request: Request, state: State) -> Response:
    check_model(state, body.model)
    params = sampling_params(state, body)
    n = body.n or 1
    prompts, reply = await run_in_threadpool(read_prompts, state, body, n)  # off the event loop: long texts take time
    if not body.stream:
        return await complete(request, state, prompts, n, params, reply)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await stream(request, state, prompts, n, params, reply, include_usage)


def read_prompts(state: ServeState, body: CompletionRequest, n: int) -> tuple[list[list[int]], Reply]:
    """The prompts as ids (and, for `echo`, as text again), checked against the limits."""
    prompts = encode_prompts(state, body.prompt)
    if len(prompts) * n > MAX_N:
        raise ApiError(400, f"{len(prompts)} prompts x n={n} asks for more than {MAX_N} completions", param="n")
    return prompts, Reply.of(state, prompts, n, bool(body.echo))


@router.post("/v1/chat/completions", include_in_schema=False)
async def chat_completions() -> Response:
    """Not yet: say so in OpenAI's shape (404, so clients do not retry), instead of a bare "Not Found"."""
    raise ApiError(
        404, "this server has no /v1/chat/completions yet: a PsyDuck model continues text; "
        "send a `prompt` to POST /v1/completions instead", code="unsupported_endpoint",
    )


async def start(
    request: Request, state: ServeState, prompts: list[list[int]], n: int, params: GenerationParams,
    on_step: Callable[[list[Delta]], None] | None = None,
) -> tuple[Future, threading.Event]:
    """Wait for a slot, then generate in a worker thread; the slot is given back when the worker ends."""
    try:
        await state.slots.acquire(request.is_disconnected)
    except Overloaded:
        raise ApiError(
            429, f"the server is busy ({state.slots.active} generations running, {state.slots.waiting} waiting); retry shortly",
            type="server_error", code="server_overloaded", headers={"Retry-After": "1"},
        ) from None
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    state.cancels.add(cancel)

    def finish(_future: Future | None = None) -> None:
        state.cancels.discard(cancel)
        state.slots.release()

    try:
        future = state.workers().submit(
            generate, state.model, state.tok, prompts, n, params, cancel, on_step, weights=state.weights
        )
    except BaseException:
        finish()
        raise
    future.add_done_callback(lambda f: threadsafe(loop, finish, f))
    return future, cancel


async def complete(
    request: Request, state: ServeState, prompts: list[list[int]], n: int, params: GenerationParams, reply: Reply,
) -> Response:
    """A whole response at once; generation stops if the client hangs up while it waits (499)."""
    try:
        future, cancel = await start(request, state, prompts, n, params)
    except ClientGone:
        return Response(status_code=499)
    result = asyncio.wrap_future(future)
    try:
        while not (await asyncio.wait({result}, timeout=0.25))[0]:
            if await request.is_disconnected():  # nobody to answer: stop generating
                return Response(status_code=499)
    finally:
        if not result.done():
            cancel.set()
    try:
        choices = result.result()
    except (PsyDuckError, ValueError) as e:
        raise ApiError(400, str(e)) from None
    chosen = [reply.choice(c.index, reply.echo[c.index] + c.text, c.finish_reason) for c in choices]
    return JSONResponse({**reply.meta, "choices": chosen, "usage": reply.usage(choices)})


async def stream(
    request: Request, state: ServeState, prompts: list[list[int]], n: int, params: GenerationParams, reply: Reply,
    include_usage: bool,
) -> Response:
    """Server-sent events: one per generated token (its text may be empty while a multi-byte
    character or a possible stop string is incomplete, so counting events counts tokens), then
    `usage` if asked for, then `data: [DONE]`. An error after the stream began is its last event."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()  # lists of Deltas, then the finished Future

    def on_step(deltas: list[Delta]) -> None:  # in the worker thread
        threadsafe(loop, queue.put_nowait, deltas)

    try:
        future, cancel = await start(request, state, prompts, n, params, on_step)
    except ClientGone:
        return Response(status_code=499)
    future.add_done_callback(lambda f: threadsafe(loop, queue.put_nowait, f))

    async def events() -> AsyncIterator[str]:
        if reply.echoed:
            yield "".join(reply.event([reply.choice(i, text, None)]) for i, text in enumerate(reply.echo))
        while not isinstance(item := await queue.get(), Future):
            yield "".join(reply.event([reply.choice(d.index, d.text, d.finish_reason)]) for d in item)
        error = item.exception()
        if error is not None:
            kind = "invalid_request_error" if isinstance(error, (PsyDuckError, ValueError)) else "server_error"
            yield "data: " + json.dumps(error_body(str(error), kind)) + "\n\n"
        elif include_usage:
            yield reply.event([], usage=reply.usage(item.result()))
        yield "data: [DONE]\n\n"

    return EventStream(events(), on_close=cancel.set)


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


# -- runs and pages ---------------------------------------------------------------------------

@router.get("/api/runs/{name}/metrics", response_model=RunMetrics, dependencies=AUTH, responses=ERRORS)
def run_metrics(name: str, state: State) -> RunMetrics:  # a plain def: FastAPI runs it in a thread (file I/O)
    if state.run_dir is None or name != state.run_name:
        raise ApiError(404, f"no run named {name!r} here; this server serves {state.run_name!r}", param="name", code="run_not_found")
    rows, updated = read_metrics(state.run_dir / "metrics.jsonl")
    return RunMetrics(run=name, rows=[json_safe(row) for row in rows], updated=updated)  # a NaN loss: null


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], float | None]:
    """metrics.jsonl's rows (a line still being written is skipped) and its modification time."""
    try:
        updated: float | None = path.stat().st_mtime
    except OSError:
        updated = None  # no evaluation yet
    return read_jsonl(path), updated


@router.get("/", include_in_schema=False)
async def playground(state: State) -> HTMLResponse:
    return HTMLResponse(state.page, headers=PAGE_HEADERS)


@router.get("/runs/{name}", include_in_schema=False)
async def run_page(name: str, state: State) -> HTMLResponse:
    return HTMLResponse(state.page, headers=PAGE_HEADERS)
