"""Every error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

OpenAI's clients read that body to raise their usual exceptions (`openai.BadRequestError`, ...), so
the server answers every failure that way: its own (`ApiError`), the framework's (an unknown route,
a wrong method) and pydantic's validation errors. Validation failures are 400, as OpenAI answers
them, not FastAPI's default 422; their message names the parameter in one readable sentence instead
of pydantic's list of one error per member of a union type.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from psyduck.serve.schemas import UNSUPPORTED


class ApiError(Exception):
    """An error answered in OpenAI's shape: raise it from a handler or a dependency."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    """The JSON object OpenAI answers an error with (also sent as the last event of a failed stream)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
    code: str | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status, headers=headers)


# What to say when a parameter has the wrong type altogether (pydantic lists one error per union member).
TYPE_HINTS = {
    "prompt": "prompt must be a string, a list of strings, a list of token ids, or a list of lists of token ids",
    "stop": "stop must be a string or a list of at most 4 strings",
    "top_k": "top_k must be a positive integer, or -1 or null for no top-k filtering (0 is refused, as in `psyduck generate`)",
}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None, str | None]:
    """(message, param, code) for pydantic's errors about a request body: the first one, in words."""
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


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param, code = validation_message(list(exc.errors()))
    return error_response(400, message, param=param, code=code)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(exc.status_code, str(exc.detail), param=None, code=code, headers=getattr(exc, "headers", None))


async def _bug(request: Request, exc: Exception) -> JSONResponse:  # never expected: a bug to report
    return error_response(500, f"internal error ({type(exc).__name__}); please report it", type="server_error")


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error `app` raises in OpenAI's shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _bug)
