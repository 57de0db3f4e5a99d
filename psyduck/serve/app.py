"""The HTTP app: OpenAI's completions and chat APIs over a trained run, plus a playground page.

    app = create_app("runs/demo")                  # or create_app(model=m, tokenizer=t)
    uvicorn.run(app, host="127.0.0.1", port=8000)  # what `psyduck serve runs/demo` does

`create_app` only wires the rooms together:
- state.py: `ServeState`, the model and the limits, kept in `app.state.psyduck`;
- routes.py: the handlers (listed there; completions.py and chat_api.py generate), on one `APIRouter`;
- schemas.py: the request and response bodies (OpenAI's names and defaults);
- errors.py: every error, ours or the framework's, in OpenAI's shape;
- openapi.py: /openapi.json and /docs, with this server's limits written in;
- limits.py: request bodies over the size limit refused before they are read;
- prompts.py: prompts to token ids, too-long ones refused before they are tokenized;
- engine.py: the engine thread running every request in one batch (batch.py), or a thread per
  request with `batching=False`, and the admission control (`Slots`).

Extensions beyond OpenAI's parameters, both from vLLM's API: `top_k` (-1 or null: off; 0 is
refused, as `psyduck generate --top-k 0` is) and `ignore_eos` (do not stop at <|endoftext|>: exactly
`max_tokens` tokens unless a `stop` string); and vLLM's /tokenizer_info, /tokenize, /detokenize,
which lm-evaluation-harness's `local-completions` uses instead of downloading a tokenizer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from psyduck.serve.errors import add_error_handlers
from psyduck.serve.limits import BodyLimit
from psyduck.serve.openapi import ServeApp
from psyduck.serve.pacing import STREAM_INTERVAL
from psyduck.serve.routes import router
from psyduck.serve.state import load_state
from psyduck.tokenizer import Tokenizer


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At start, the batching engine (a child process takes seconds: not during the first request);
    at shutdown, stop the generations still running, so the server does not wait for them."""
    state = app.state.psyduck
    if state.batching and state.engine_in_process:
        state.start()
    yield
    state.close()


def create_app(
    run_dir: str | Path | None = None,
    *,
    model: Any = None,
    tokenizer: Tokenizer | None = None,
    model_name: str | None = None,
    checkpoint: str | None = None,
    device: str = "cpu",
    api_key: str | None = None,
    max_tokens_cap: int = 512,
    max_prompt_tokens: int | None = None,
    max_concurrency: int | None = None,
    max_queue: int = 16,
    max_body_mb: float = 8.0,
    batching: bool = True,
    stream_interval: float = STREAM_INTERVAL,
    engine: str = "auto",
) -> FastAPI:
    """The app serving a run folder (loaded here), or an already-loaded `model` and `tokenizer`.

    `max_prompt_tokens` defaults to the model's context window (block_size). With `run_dir` and a
    model both given, the model is served and the folder only supplies the name and the metrics.
    A request body over `max_body_mb` megabytes (10^6 bytes) is refused with 413 before it is read.
    `batching`: one engine runs every request in one batch (False: a thread per request).
    `max_concurrency` defaults to 16 with batching, 4 without (state.py's `default_concurrency`).
    `stream_interval`: a stream's tokens of at most that many seconds go out as one event (pacing.py).
    `engine` (with batching): "process" runs the batch in a child process (engine_process.py),
    "thread" in a thread of this one, "auto" the child for a model on the CPU where it can.
    """
    state = load_state(
        run_dir, model=model, tokenizer=tokenizer, model_name=model_name, checkpoint=checkpoint, device=device,
        api_key=api_key, max_tokens_cap=max_tokens_cap, max_prompt_tokens=max_prompt_tokens,
        max_concurrency=max_concurrency, max_queue=max_queue, max_body_mb=max_body_mb, batching=batching,
        stream_interval=stream_interval, engine=engine,
    )

    app = ServeApp(
        title="PsyDuck", version="0.1.0", lifespan=lifespan,
        description="OpenAI-compatible completions and chat APIs over a PsyDuck run, and a browser playground.",
    )
    app.state.psyduck = state
    add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=state.max_body_bytes)
    app.include_router(router)
    return app
