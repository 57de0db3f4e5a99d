"""The OpenAPI schema, with this server's own limits written in.

FastAPI derives /openapi.json from the pydantic models, which know OpenAI's rules but not this
server's: which model id exists, the max_tokens cap, the vocabulary, the longest prompt. Writing them
into the schema makes it tell the truth, so a client generator (or schemathesis, in the tests) that
follows the schema sends requests this server accepts.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from psyduck.serve.schemas import MAX_N
from psyduck.serve.state import ServeState


def with_server_limits(schema: dict[str, Any], state: ServeState) -> dict[str, Any]:
    """`schema` (FastAPI's, changed in place and returned) narrowed to what `state` accepts."""
    names = {"/v1/models/{model_id}": state.name, "/api/runs/{name}/metrics": state.run_name}
    for path, name in names.items():
        for param in schema["paths"][path]["get"].get("parameters", []):
            if param["in"] == "path" and name is not None:
                param["schema"]["enum"] = [name]
    schemas = schema["components"]["schemas"]
    chat_counts = ("max_tokens", "max_completion_tokens")
    for request, counts, default in (
        ("CompletionRequest", ("max_tokens",), min(16, state.max_tokens_cap)), ("ChatRequest", chat_counts, state.max_tokens_cap),
    ):
        props = schemas[request]["properties"]
        for branch in props["model"]["anyOf"]:
            if branch.get("type") == "string":
                branch["enum"] = [state.name]
        for count in counts:
            props[count]["default"] = default
            for branch in props[count]["anyOf"]:
                if branch.get("type") == "integer":
                    branch["maximum"] = state.max_tokens_cap
    props = schemas["CompletionRequest"]["properties"]
    ids = {"type": "integer", "minimum": 0, "maximum": state.tok.vocab_size - 1}
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
    return schema


class ServeApp(FastAPI):
    """FastAPI, whose schema (built on the first request for it) carries the server's limits."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = with_server_limits(super().openapi(), self.state.psyduck)
        return self.openapi_schema
