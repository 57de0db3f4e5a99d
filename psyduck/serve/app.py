"""The HTTP app: OpenAI's completions API over a trained run, plus a playground page.

    app = create_app("runs/demo")                  # or create_app(model=m, tokenizer=t)
    uvicorn.run(app, host="127.0.0.1", port=8000)  # what `psyduck serve runs/demo` does

Routes:
    GET  /v1/models, /v1/models/{id}   the one model this server holds (named after the run folder)
    POST /v1/completions               prompt -> continuation; `stream: true` for server-sent events
    GET  /health                       liveness, plus how many generations run and wait
    GET  /api/info                     what the page needs to draw its controls
    GET  /api/runs/{name}/metrics      the run's metrics.jsonl as JSON (the loss-curve tab polls it)
    GET  /, /runs/{name}               the playground and the loss curves (one self-contained page)
    GET  /openapi.json, /docs          the schema FastAPI derives from the models below

Design choices:
- Every error, ours or the framework's (validation, unknown route), has OpenAI's shape:
  {"error": {"message", "type", "param", "code"}}, so OpenAI clients raise their usual exceptions.
  Request validation failures are 400 (FastAPI's default is 422), as OpenAI answers them.
- Generation runs in a worker thread per request (see engine.py); the event loop only moves bytes.
  A client that disconnects, streaming or not, sets its request's cancel flag: generation stops
  within one token and the slot goes to the next request in line.
- Extensions beyond OpenAI's parameters, both from vLLM's API: `top_k` (0 or -1: off) and
  `ignore_eos` (do not stop at <|endoftext|>: exactly `max_tokens` tokens unless a `stop` string).
- With `stream: true`, each generated token is one event (its text may be empty while a multi-byte
  character or a possible stop string is incomplete), so counting events counts tokens.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from psyduck.errors import PsyDuckError
from psyduck.io import read_jsonl
from psyduck.serve.engine import Choice, ClientGone, Overloaded, SamplingParams, Slots, generate

PAGE = Path(__file__).with_name("static") / "index.html"
MAX_N = 16  # completions per prompt a request may ask for
PAGE_HEADERS = {  # the page loads nothing from elsewhere: it works offline, and this proves it
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
}


# ---------------------------------------------------------------------------------------------
# Request and response shapes (OpenAI's, with the same names and defaults)
# ---------------------------------------------------------------------------------------------

class StreamOptions(BaseModel):
    include_usage: bool | None = Field(False, description="send a last event with `usage` and no choices")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # NaN and Infinity are not numbers anyone meant

    model: str | None = Field(None, description="the served model's id (GET /v1/models); may be omitted")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="text, texts, token ids, or lists of token ids; an empty string starts a new document"
    )
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate per choice: default 16, at most the server's cap")
    temperature: float | None = Field(1.0, ge=0, description="0 is greedy; higher is more random")
    top_p: float | None = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the most likely tokens up to this mass")
    top_k: int | None = Field(None, ge=-1, description="extension: keep the k most likely tokens; 0 or -1 disables")
    n: int | None = Field(1, ge=1, le=MAX_N, description="completions per prompt")
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(None, description="up to 4 strings that end a completion (not included)")
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="same seed, prompt and parameters: same text")
    stream: bool | None = Field(False, description="send tokens as server-sent events, ending with `data: [DONE]`")
    stream_options: StreamOptions | None = None
    echo: bool | None = Field(False, description="put the prompt before the completion")
    ignore_eos: bool | None = Field(False, description="extension: do not stop at end-of-text")
    # Accepted for compatibility, but only with their neutral values (anything else is a 400).
    logprobs: int | None = Field(None, ge=0, le=0, description="not supported: only null or 0")
    best_of: int | None = Field(None, ge=1, le=1, description="not supported: only null or 1")
    suffix: None = Field(None, description="not supported: only null")
    presence_penalty: float | None = Field(None, ge=0, le=0, description="not supported: only null or 0")
    frequency_penalty: float | None = Field(None, ge=0, le=0, description="not supported: only null or 0")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="not supported: only null or {}")
    user: str | None = Field(None, description="ignored")


UNSUPPORTED = ("logprobs", "best_of", "suffix", "presence_penalty", "frequency_penalty", "logit_bias")


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "psyduck"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    active: int = Field(description="generations running now")
    queued: int = Field(description="requests waiting for a slot")


class Info(BaseModel):
    model: str
    run: str | None
    auth: bool = Field(description="whether /v1 and /api need `Authorization: Bearer KEY`")
    max_tokens_cap: int
    max_prompt_tokens: int
    block_size: int
    parameters: int
    tokenizer: str


class RunMetrics(BaseModel):
    run: str
    rows: list[dict[str, Any]] = Field(description="one object per evaluation, as in metrics.jsonl")
    updated: float | None = Field(description="metrics.jsonl's modification time (Unix seconds)")


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 429)}


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers)


def error_response(
    status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
    code: str | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# What to say when a parameter has the wrong type altogether (pydantic lists one error per union member).
TYPE_HINTS = {
    "prompt": "prompt must be a string, a list of strings, a list of token ids, or a list of lists of token ids",
    "stop": "stop must be a string or a list of at most 4 strings",
}


def validation_message(errors: list[dict]) -> tuple[str, str | None, str | None]:
    """(message, param, code) for pydantic's errors about a request body."""
    err = errors[0]
    loc = [x for x in err.get("loc", ()) if x != "body"]
    if err.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({err.get('ctx', {}).get('error', err.get('msg'))})", None, None
    if not loc:
        return "the request body must be a JSON object (with at least a `prompt`)", None, None
    param = str(loc[0])
    if err.get("type") == "missing":
        return f"missing required parameter: {param}", param, None
    if param in UNSUPPORTED:
        return f"{param} is not supported by this server; leave it out", param, "unsupported_parameter"
    if param in TYPE_HINTS and len(loc) > 1 and err.get("type") != "too_long":
        return TYPE_HINTS[param], param, None
    return f"{param}: {err.get('msg', 'invalid value')}", param, None


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------

class ServeState:
    """Everything a request handler needs, built once by `create_app`."""

    def __init__(
        self, model, tokenizer, name: str, run_dir: Path | None, api_key: str | None, max_tokens_cap: int,
        max_prompt_tokens: int, max_concurrency: int, max_queue: int,
    ) -> None:
        self.model, self.tok, self.name, self.run_dir, self.api_key = model, tokenizer, name, run_dir, api_key
        self.max_tokens_cap, self.max_prompt_tokens = max_tokens_cap, max_prompt_tokens
        self.slots = Slots(max_concurrency, max_queue)
        self.cancels: set[threading.Event] = set()  # of generations in flight; set at shutdown
        self.created = int(time.time())
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, *args) -> Future:
        """Run `generate(*args)` in a worker thread (one per slot; made on first use)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.slots.concurrency, thread_name_prefix="psyduck-generate")
        return self._executor.submit(generate, self.model, self.tok, *args)

    def close(self) -> None:
        """Stop every generation at its next token and let the worker threads go."""
        for cancel in list(self.cancels):
            cancel.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @property
    def run_name(self) -> str | None:
        return self.run_dir.name if self.run_dir is not None else None


def create_app(
    run_dir: str | Path | None = None,
    *,
    model=None,
    tokenizer=None,
    model_name: str | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    api_key: str | None = None,
    max_tokens_cap: int = 512,
    max_prompt_tokens: int | None = None,
    max_concurrency: int = 4,
    max_queue: int = 16,
) -> FastAPI:
    """The app serving a run folder (loaded here), or an already-loaded `model` and `tokenizer`.

    `max_prompt_tokens` defaults to the model's context window (block_size). With `run_dir` and a
    model both given, the model is served and the folder only supplies the name and the metrics.
    """
    for key, value, low in (
        ("max_tokens_cap", max_tokens_cap, 1), ("max_concurrency", max_concurrency, 1), ("max_queue", max_queue, 0),
        ("max_prompt_tokens", 1 if max_prompt_tokens is None else max_prompt_tokens, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise PsyDuckError(f"{key.replace('_', '-')} must be an integer >= {low}, got {value!r}")
    if api_key is not None and not api_key.strip():
        raise PsyDuckError("--api-key is empty; give a non-empty key or leave the option out")
    run = Path(run_dir) if run_dir is not None else None
    if model is None:
        if run is None:
            raise PsyDuckError("create_app needs a run folder or a model and tokenizer")
        from psyduck.runs import load_run

        model, tokenizer = load_run(run, device=device, checkpoint=checkpoint)
    elif tokenizer is None:
        raise PsyDuckError("create_app was given a model without its tokenizer")
    model.eval()
    name = model_name or (run.resolve().name if run is not None else "psyduck")
    state = ServeState(
        model, tokenizer, name, run, api_key, max_tokens_cap,
        max_prompt_tokens or model.config.block_size, max_concurrency, max_queue,
    )
    page = PAGE.read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.close()

    app = FastAPI(
        title="PsyDuck",
        version="0.1.0",
        description="An OpenAI-compatible completions API over a PsyDuck run, and a browser playground.",
        lifespan=lifespan,
    )
    app.state.psyduck = state

    # -- errors in OpenAI's shape -------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = validation_message(list(exc.errors()))
        return error_response(400, message, param=param, code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), param=None, code=code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:  # never expected: a bug to report
        return error_response(500, f"internal error ({type(exc).__name__}); please report it", type="server_error")

    # -- access -------------------------------------------------------------------------------

    bearer = HTTPBearer(auto_error=False, description="only when the server was started with --api-key")

    def check_key(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008 (FastAPI's idiom)
        if state.api_key is None:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), state.api_key.encode("utf-8")):
            raise ApiError(
                401, "missing or incorrect API key; send `Authorization: Bearer KEY` with the server's --api-key",
                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
            )

    auth = [Depends(check_key)]

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != state.name:
            raise ApiError(
                404, f"the model {requested!r} does not exist; this server serves {state.name!r} (GET /v1/models)",
                param="model", code="model_not_found",
            )

    # -- models and health --------------------------------------------------------------------

    def card() -> ModelCard:
        return ModelCard(id=state.name, created=state.created)

    @app.get("/v1/models", response_model=ModelList, dependencies=auth, responses=ERRORS, tags=["openai"])
    async def list_models() -> ModelList:
        return ModelList(data=[card()])

    @app.get("/v1/models/{model_id}", response_model=ModelCard, dependencies=auth, responses=ERRORS, tags=["openai"])
    async def get_model(model_id: str) -> ModelCard:
        check_model(model_id)
        return card()

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(model=state.name, active=state.slots.active, queued=state.slots.waiting)

    @app.get("/api/info", response_model=Info)
    async def info() -> Info:
        cfg = state.model.config
        return Info(
            model=state.name, run=state.run_name, auth=state.api_key is not None, max_tokens_cap=state.max_tokens_cap,
            max_prompt_tokens=state.max_prompt_tokens, block_size=cfg.block_size,
            parameters=state.model.num_params(), tokenizer=state.tok.name,
        )

    # -- completions --------------------------------------------------------------------------

    def sampling_params(body: CompletionRequest) -> SamplingParams:
        """Check what the schema cannot (the cap) and fill in defaults."""
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
        return SamplingParams(max_tokens, temperature, top_k, top_p, body.seed, stop, bool(body.ignore_eos))

    def encode_prompts(prompt: Any) -> list[list[int]]:
        """The request's prompt(s) as token-id lists (runs in a worker thread: long texts take time)."""
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
                ids = state.tok.encode(item) if item else [state.tok.eot_id]  # "": start a new document
            else:
                ids = list(item)
                if not ids:
                    raise ApiError(400, "a token-id prompt is empty; give at least one id", param="prompt")
                bad = next((i for i in ids if not 0 <= i < state.tok.vocab_size), None)
                if bad is not None:
                    raise ApiError(400, f"token id {bad} is outside the vocabulary (0..{state.tok.vocab_size - 1})", param="prompt")
            if len(ids) > state.max_prompt_tokens:
                raise ApiError(
                    400, f"the prompt is {len(ids)} tokens long; this server accepts at most {state.max_prompt_tokens}",
                    param="prompt", code="context_length_exceeded",
                )
            out.append(ids)
        return out

    async def start(request: Request, prompts, n: int, params: SamplingParams, on_step=None) -> tuple[Future, threading.Event]:
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
            future = state.submit(prompts, n, params, cancel, on_step)
        except BaseException:
            finish()
            raise
        future.add_done_callback(lambda f: threadsafe(loop, finish, f))
        return future, cancel

    @app.post(
        "/v1/completions", response_model=CompletionResponse, dependencies=auth, tags=["openai"],
        responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        params = sampling_params(body)
        n = body.n or 1
        prompts = await run_in_threadpool(encode_prompts, body.prompt)
        if len(prompts) * n > MAX_N:
            raise ApiError(400, f"{len(prompts)} prompts x n={n} asks for more than {MAX_N} completions", param="n")
        echo = [state.tok.decode(p) if body.echo else "" for p in prompts for _ in range(n)]
        meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()), "model": state.name}
        prompt_tokens = sum(len(p) for p in prompts)

        def usage(choices: list[Choice]) -> dict:
            done = sum(c.tokens for c in choices)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}

        def choice(index: int, text: str, finish_reason: str | None) -> dict:
            return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}

        if not body.stream:
            try:
                future, cancel = await start(request, prompts, n, params)
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
            chosen = [choice(c.index, echo[c.index] + c.text, c.finish_reason) for c in choices]
            return JSONResponse({**meta, "choices": chosen, "usage": usage(choices)})

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()  # lists of Deltas, then the finished Future

        def on_step(deltas) -> None:  # in the worker thread
            threadsafe(loop, queue.put_nowait, deltas)

        try:
            future, cancel = await start(request, prompts, n, params, on_step)
        except ClientGone:
            return Response(status_code=499)
        future.add_done_callback(lambda f: threadsafe(loop, queue.put_nowait, f))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def event(choices: list[dict], **extra) -> str:
            return "data: " + json.dumps({**meta, "choices": choices, **extra}) + "\n\n"

        async def events():
            if body.echo:
                yield "".join(event([choice(i, text, None)]) for i, text in enumerate(echo))
            while not isinstance(item := await queue.get(), Future):
                yield "".join(event([choice(d.index, d.text, d.finish_reason)]) for d in item)
            error = item.exception()
            if error is not None:
                kind = "invalid_request_error" if isinstance(error, (PsyDuckError, ValueError)) else "server_error"
                yield "data: " + json.dumps({"error": {"message": str(error), "type": kind, "param": None, "code": None}}) + "\n\n"
            elif include_usage:
                yield event([], usage=usage(item.result()))
            yield "data: [DONE]\n\n"

        return EventStream(events(), on_close=cancel.set)

    # -- runs and pages -----------------------------------------------------------------------

    @app.get("/api/runs/{name}/metrics", response_model=RunMetrics, dependencies=auth, responses=ERRORS)
    def run_metrics(name: str) -> RunMetrics:  # a plain def: FastAPI runs it in a thread (file I/O)
        if state.run_dir is None or name != state.run_name:
            raise ApiError(404, f"no run named {name!r} here; this server serves {state.run_name!r}", param="name", code="run_not_found")
        path = state.run_dir / "metrics.jsonl"
        try:
            updated = path.stat().st_mtime
        except OSError:
            updated = None  # no evaluation yet
        return RunMetrics(run=name, rows=[finite(row) for row in read_jsonl(path)], updated=updated)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/runs/{name}", include_in_schema=False)
    async def run_page(name: str) -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    framework_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema with this server's own limits written in: model id, cap, vocabulary."""
        if app.openapi_schema is None:
            schema = framework_openapi()
            names = {"/v1/models/{model_id}": state.name, "/api/runs/{name}/metrics": state.run_name}
            for path, name in names.items():
                for param in schema["paths"][path]["get"].get("parameters", []):
                    if param["in"] == "path" and name is not None:
                        param["schema"]["enum"] = [name]
            props = schema["components"]["schemas"]["CompletionRequest"]["properties"]
            ids = {"type": "integer", "minimum": 0, "maximum": state.tok.vocab_size - 1}
            for branch in props["model"]["anyOf"]:
                if branch.get("type") == "string":
                    branch["enum"] = [state.name]
            props["max_tokens"]["default"] = min(16, state.max_tokens_cap)
            for branch in props["max_tokens"]["anyOf"]:
                if branch.get("type") == "integer":
                    branch["maximum"] = state.max_tokens_cap
            for branch in props["prompt"]["anyOf"]:
                if branch.get("type") != "array":
                    continue
                if branch["items"].get("type") == "integer":  # one prompt as token ids
                    branch.update(minItems=1, maxItems=state.max_prompt_tokens, items=ids)
                elif branch["items"].get("type") == "array":  # several prompts as token ids
                    branch.update(minItems=1, maxItems=MAX_N)
                    branch["items"].update(minItems=1, maxItems=state.max_prompt_tokens, items=ids)
                else:
                    branch.update(minItems=1, maxItems=MAX_N)
        return app.openapi_schema

    app.openapi = openapi
    return app


def threadsafe(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """Call `fn(*args)` in the event loop's thread, unless the loop is gone (the server stopped)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def finite(v: Any) -> Any:
    """JSON has no NaN or Infinity: a diverged run's loss is sent as null."""
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [finite(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


class EventStream(StreamingResponse):
    """Server-sent events that call `on_close` however the response ends (done, error, disconnect)."""

    def __init__(self, content, on_close) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
