"""Serving a trained run over HTTP: OpenAI's completions and chat APIs, and a browser playground.

    psyduck serve runs/demo                 # http://127.0.0.1:8000/ and /v1
    from psyduck.serve import create_app    # the same app, in-process (tests, other servers)

The model side: batch.py (`Batch`, `Job`: the rows generated together, one forward pass per
step), rowcache.py (`RowCache`: a KV cache whose rows have their own lengths), engine.py (the
engine thread that runs the batch, `run_alone` for `--batching off`, and `Slots`, the admission
control). The HTTP side: app.py (`create_app`, the wiring), state.py (what the handlers share),
access.py (API key, model name), routes.py (models, health, tokenizer, pages), completions.py and
chat_api.py (the two generating routes, sharing generation.py; pacing.py merges a stream's
deltas over `--stream-interval`), logprobs.py (OpenAI's two logprob
shapes), schemas.py (the bodies), errors.py (OpenAI's error shape), openapi.py (the schema),
limits.py (the body-size limit) and prompts.py (prompts to ids, within the limits); command.py is
the CLI, static/index.html the page (completion, chat, loss curves). FastAPI and uvicorn are
imported only when a server is built, so `psyduck` works without them (`pip install
'psyduck[serve]'` adds them).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any):
    """See `psyduck.serve.app.create_app`."""
    from psyduck.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
