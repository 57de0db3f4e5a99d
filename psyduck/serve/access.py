"""Who may ask, and for which model: the dependencies every OpenAI-style route shares.

The state arrives through the `get_state` dependency, never as a closure variable, so every
handler is a plain function a test can call with a `ServeState` of its own.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from psyduck.serve.errors import ApiError
from psyduck.serve.state import ServeState


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
