"""What goes over the wire: the request and response bodies, as pydantic models.

The names, types and defaults are OpenAI's (https://platform.openai.com/docs/api-reference/completions),
so the `openai` package and tools built on it work unchanged. FastAPI validates every request against
these models and derives /openapi.json from them; openapi.py then writes this server's own limits
(the model id, the max_tokens cap, the vocabulary) into that schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, WithJsonSchema

MAX_N = 16  # completions per prompt a request may ask for (prompts x n, in all)
MAX_LOGPROBS = 20  # most likely alternatives reported per token (vLLM's limit; OpenAI's is 5)


class StreamOptions(BaseModel):
    include_usage: bool | None = Field(False, description="send a last event with `usage` and no choices")


def prompt_shape(value: Any) -> str:
    """Which of the four prompt shapes `value` is meant to be, judged by its first element."""
    if isinstance(value, str):
        return "text"
    first = value[0] if isinstance(value, list) and value else None
    return "texts" if isinstance(first, str) else "id_lists" if isinstance(first, list) else "ids"


# OpenAI's four prompt shapes. Left to itself, pydantic tries every shape and builds an error per
# element for each one that fails: seconds of the event loop for a long list of ids. Here the first
# element picks the one shape to validate (docs/performance.md ("The server: request limits and prompt validation") has the timings). The schema
# stays the plain `anyOf` clients know.
Prompt = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[str], Tag("texts")] | Annotated[list[int], Tag("ids")]
    | Annotated[list[list[int]], Tag("id_lists")],
    Discriminator(prompt_shape),
    WithJsonSchema({"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
    ]}),
]


class CompletionRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # NaN and Infinity are not numbers anyone meant

    model: str | None = Field(None, description="the served model's id (GET /v1/models); may be omitted")
    prompt: Prompt = Field(
        ..., description="text, texts, token ids, or lists of token ids; an empty string starts a new document"
    )
    max_tokens: int | None = Field(
        None, ge=0, description="tokens to generate per choice: default 16, at most the server's cap (0 with echo: score the prompt)"
    )
    temperature: float | None = Field(1.0, ge=0, description="0 is greedy; higher is more random")
    top_p: float | None = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the most likely tokens up to this mass")
    # vLLM's spelling of "off" (-1) is kept; 0 is refused, as `psyduck generate --top-k 0` is.
    top_k: Annotated[int, Field(ge=1)] | Literal[-1] | None = Field(
        None, description="extension: keep the k most likely tokens; -1 or null disables"
    )
    n: int | None = Field(1, ge=1, le=MAX_N, description="completions per prompt")
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(None, description="up to 4 strings that end a completion (not included)")
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="same seed, prompt and parameters: same text")
    stream: bool | None = Field(False, description="send tokens as server-sent events, ending with `data: [DONE]`")
    stream_options: StreamOptions | None = None
    echo: bool | None = Field(False, description="put the prompt before the completion")
    ignore_eos: bool | None = Field(False, description="extension: do not stop at end-of-text")
    # Accepted for compatibility, but only with their neutral values (anything else is a 400).
    logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="report each token's log-probability and this many most likely alternatives"
    )
    best_of: int | None = Field(None, ge=1, le=1, description="not supported: only null or 1")
    suffix: None = Field(None, description="not supported: only null")
    presence_penalty: float | None = Field(None, ge=0, le=0, description="not supported: only null or 0")
    frequency_penalty: float | None = Field(None, ge=0, le=0, description="not supported: only null or 0")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="not supported: only null or {}")
    user: str | None = Field(None, description="ignored")


# The parameters above that only take their neutral value (errors about them say "not supported").
UNSUPPORTED = ("best_of", "suffix", "presence_penalty", "frequency_penalty", "logit_bias")


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="the first echoed prompt token has none (null)")
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
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


class TokenizeRequest(BaseModel):
    prompt: str
    add_special_tokens: bool | None = Field(False, description="ignored: PsyDuck's tokenizers add none")


class DetokenizeRequest(BaseModel):
    tokens: list[int]


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


# The error statuses an OpenAI-style route documents in the schema, all with ErrorResponse's shape.
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 429)}


class ChatRequest(BaseModel):
    """OpenAI's chat request (https://platform.openai.com/docs/api-reference/chat); `messages` are checked
    by psyduck.chat (roles, text content) so the errors name the message at fault."""

    model_config = ConfigDict(allow_inf_nan=False)

    model: str | None = Field(None, description="the served model's id (GET /v1/models); may be omitted")
    messages: list[Any] = Field(..., description="the conversation: {role: system|user|assistant, content: text}")
    max_tokens: int | None = Field(None, ge=1, description="deprecated name of max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1, description="tokens to generate per choice: default and at most the server's cap")
    temperature: float | None = Field(1.0, ge=0, description="0 is greedy; higher is more random")
    top_p: float | None = Field(1.0, gt=0, le=1, description="nucleus sampling")
    top_k: Annotated[int, Field(ge=1)] | Literal[-1] | None = Field(None, description="extension: keep the k most likely tokens")
    n: int | None = Field(1, ge=1, le=MAX_N, description="replies to generate")
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(None, description="up to 4 strings that end a reply")
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="same seed, messages and parameters: same reply")
    stream: bool | None = Field(False, description="send the reply as chunks with a `delta`, ending with `data: [DONE]`")
    stream_options: StreamOptions | None = None
    logprobs: bool | None = Field(False, description="report each token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="alternatives per token (with logprobs)")
    ignore_eos: bool | None = Field(False, description="extension: do not stop at end-of-text")
    presence_penalty: float | None = Field(None, ge=0, le=0, description="not supported: only null or 0")
    frequency_penalty: float | None = Field(None, ge=0, le=0, description="not supported: only null or 0")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="not supported: only null or {}")
    user: str | None = Field(None, description="ignored")
