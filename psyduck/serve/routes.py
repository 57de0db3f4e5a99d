"""The routes, on one `APIRouter`: each handler reads the server's `ServeState` from `app.state`.

    GET  /v1/models, /v1/models/{id}   the one model this server holds (named after the run folder)
    POST /v1/completions               prompt -> continuation; `stream: true` for server-sent events (completions.py)
    POST /v1/chat/completions          messages -> the assistant's reply (chat_api.py)
    GET  /tokenizer_info, POST /tokenize, /detokenize   the tokenizer, as vLLM serves it
    GET  /health                       liveness, plus how many generations run and wait
    GET  /api/info                     what the page needs to draw its controls (behind the key, if any)
    GET  /api/runs/{name}/metrics      the run's metrics.jsonl as JSON (the loss-curve tab polls it)
    GET  /, /runs/{name}               the playground and the loss curves (one self-contained page)

The state arrives through the `get_state` dependency (access.py), never as a closure variable, so
every handler here is a plain function a test can call with a `ServeState` of its own. The two
generating routes share generation.py; the model runs in the engine (engine.py, batch.py), and
the event loop only moves bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from psyduck.io import json_safe, read_jsonl
from psyduck.serve import chat_api, completions
from psyduck.serve.access import AUTH, State, check_key, check_model, get_state
from psyduck.serve.errors import ApiError
from psyduck.serve.generation import sampling_params
from psyduck.serve.prompts import encode_text
from psyduck.serve.schemas import (
    ERRORS,
    DetokenizeRequest,
    Health,
    Info,
    ModelCard,
    ModelList,
    RunMetrics,
    TokenizeRequest,
)
from psyduck.serve.state import ServeState

PAGE_HEADERS = {  # the page loads nothing from elsewhere: it works offline, and this proves it
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter()
router.include_router(completions.router)
router.include_router(chat_api.router)
__all__ = ["check_key", "check_model", "get_state", "router", "sampling_params"]  # the tests call these here


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


# -- the tokenizer (vLLM's endpoints: lm-evaluation-harness's `remote` tokenizer uses them) ---------

@router.get("/tokenizer_info", dependencies=AUTH, responses=ERRORS)
async def tokenizer_info(state: State) -> dict[str, Any]:
    eot = state.tok.decode([state.tok.eot_id])
    return {"tokenizer": state.tok.name, "vocab_size": state.tok.vocab_size, "eos_token": eot, "bos_token": None,
            "pad_token": eot, "model_max_length": state.model.config.block_size}


@router.post("/tokenize", dependencies=AUTH, responses=ERRORS)
def tokenize(body: TokenizeRequest, state: State) -> dict[str, Any]:  # a plain def: runs in a thread
    if body.prompt == state.tok.decode([state.tok.eot_id]):
        tokens = [state.tok.eot_id]  # the end-of-text marker's text names the marker
    else:
        tokens = encode_text(state, body.prompt) if body.prompt else []
    return {"tokens": tokens, "count": len(tokens), "max_model_len": state.model.config.block_size}


@router.post("/detokenize", dependencies=AUTH, responses=ERRORS)
def detokenize(body: DetokenizeRequest, state: State) -> dict[str, str]:
    bad = next((i for i in body.tokens if not 0 <= i < state.tok.vocab_size), None)
    if bad is not None:
        raise ApiError(400, f"token id {bad} is outside the vocabulary (0..{state.tok.vocab_size - 1})", param="tokens")
    return {"prompt": state.tok.decode(body.tokens)}


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
