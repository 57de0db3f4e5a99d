"""`ServeState`: everything the request handlers share, built once per app and kept in `app.state`.

Handlers receive it through the `get_state` dependency (routes.py) rather than as closure
variables, so a test can call a handler with a small `ServeState` of its own and no app at all.
`load_state` turns `create_app`'s arguments into one: it checks the limits and loads the run.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from psyduck.chat import ChatTemplate, load_template, plain_template
from psyduck.errors import PsyDuckError
from psyduck.generate import DecodeWeights
from psyduck.runs import nonfinite_weights
from psyduck.serve import engine_process
from psyduck.serve.batch import Job
from psyduck.serve.engine import Engine, Slots, run_alone
from psyduck.serve.engine_process import EngineProcess
from psyduck.serve.pacing import STREAM_INTERVAL
from psyduck.tokenizer import Tokenizer

PAGE = Path(__file__).with_name("static") / "index.html"  # the playground and loss curves, one page
ENGINES = ("auto", "process", "thread")  # where a batching server's batch runs (`ServeState.engine_in_process`)


@dataclass(eq=False)
class ServeState:
    """The served model and this server's limits, plus what is in flight (slots, cancel flags)."""

    model: Any  # a GPT in eval mode (Any: a test may pass a stand-in that never generates)
    tok: Tokenizer
    name: str  # the model id clients send
    run_dir: Path | None = None  # where /api/runs/NAME/metrics reads from
    api_key: str | None = None
    max_tokens_cap: int = 512
    max_prompt_tokens: int = 1024
    max_concurrency: int = 16  # generations at once (default_concurrency)
    max_queue: int = 16
    page: str = ""  # the HTML of PAGE
    max_body_bytes: int = 8 * 10**6  # larger request bodies are refused before they are read (limits.py)
    batching: bool = True  # one engine batching every request (False: a thread per request)
    template: ChatTemplate = field(default_factory=plain_template)  # how /v1/chat/completions writes messages
    stream_interval: float = STREAM_INTERVAL  # seconds of a stream's tokens sent as one event (pacing.py)
    engine_kind: str = "auto"  # where the batch runs: "process", "thread", "auto" (ENGINES, `engine_in_process`)
    slots: Slots = field(init=False)
    cancels: set[threading.Event] = field(init=False, default_factory=set)  # of generations in flight
    created: int = field(init=False, default_factory=lambda: int(time.time()))
    executor: ThreadPoolExecutor | None = field(init=False, default=None)  # made on first use
    token_chars: int = field(init=False)  # the most characters one token stands for (prompts.py)
    weights: DecodeWeights | None = field(init=False, default=None)  # the CPU decode copies, built once
    engine: Engine | EngineProcess | None = field(init=False, default=None)  # with batching: made on first use

    def __post_init__(self) -> None:
        self.slots = Slots(self.max_concurrency, self.max_queue)
        self.token_chars = longest_token(self.tok)
        if isinstance(self.model, torch.nn.Module) and not self.engine_in_process:  # a stand-in never generates
            # batching multiplies many rows at once, where float32 wins: float16's CPU kernels pay
            # only for one row of a large matrix, and lose 3-7x at 16 rows (docs/performance.md);
            # and where oneDNN's packed products beat BLAS 2x at 16 rows (generate/decode_weights.py)
            self.weights = DecodeWeights.build(self.model, batched=self.batching)

    @property
    def engine_in_process(self) -> bool:
        """Whether the batch runs in a child process (engine_process.py): "auto" says yes for a CPU
        model where the platform has a fork server; GPUs keep the thread (their steps wait on the device)."""
        if not self.batching or self.engine_kind == "thread" or not isinstance(self.model, torch.nn.Module):
            return False
        cpu = next(self.model.parameters()).device.type == "cpu"
        return self.engine_kind == "process" or (cpu and engine_process.available())

    def start(self) -> Engine | EngineProcess:
        """The batching engine, made if not yet. `psyduck serve` calls this before it listens, so
        that no request waits for the child process (and, the first time, the fork server): seconds."""
        if self.engine is None:
            self.engine = EngineProcess(self.model, self.tok) if self.engine_in_process else Engine(self.model, self.tok, self.weights)
            if isinstance(self.engine, EngineProcess):
                self.engine.start()
        return self.engine

    @property
    def run_name(self) -> str | None:
        return self.run_dir.name if self.run_dir is not None else None

    def workers(self) -> ThreadPoolExecutor:
        """The generation threads: one per slot, started on the first request."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(self.slots.concurrency, thread_name_prefix="psyduck-generate")
        return self.executor

    def submit(self, job: Job) -> None:
        """Start generating `job`: in the engine's batch, or (batching off) in a worker thread of its own."""
        assert isinstance(self.model, torch.nn.Module), "this server's model cannot generate"
        if self.batching:
            self.start().submit(job)
        else:
            self.workers().submit(run_alone, self.model, self.tok, self.weights, job)

    def close(self) -> None:
        """Stop every generation at its next token and let the worker threads go (at shutdown)."""
        for cancel in list(self.cancels):
            cancel.set()
        if self.engine is not None:
            self.engine.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


def default_concurrency(batching: bool) -> int:
    """How many generations run at once unless `--max-concurrency` says: 16 with batching, 4 without.

    With batching, every running generation is a row of the one step, and a step of 16 rows costs
    a few times one of a single row on a CPU (docs/performance.md), so 16 clients share it well.
    Each running continuation (a request with `n` holds n) keeps its own KV cache of
    2 x n_layer x block_size x kv_heads x head_size floats: 1 MB for cpu-small, 3 MB for seed-60m,
    75 MB for gpt2-124m (the bound on the server's cache memory: that, times concurrency x n).
    Without batching, each generation is a thread of its own competing for the cores: a few suffice.
    """
    return 16 if batching else 4


def longest_token(tok: Tokenizer) -> int:
    """The most characters one token's text can hold (part of a character decodes as one U+FFFD).

    One pass over the vocabulary, once per server (a fraction of a second even for cl100k_base).
    """
    return max(1, max((len(tok.decode([i])) for i in range(tok.vocab_size)), default=1))


def load_state(
    run_dir: str | Path | None, *, model: Any = None, tokenizer: Tokenizer | None = None, model_name: str | None = None,
    checkpoint: str | None = None, device: str = "cpu", api_key: str | None = None, max_tokens_cap: int = 512,
    max_prompt_tokens: int | None = None, max_concurrency: int | None = None, max_queue: int = 16,
    max_body_mb: float = 8.0, batching: bool = True, stream_interval: float = STREAM_INTERVAL, engine: str = "auto",
) -> ServeState:
    """Check the limits (one-line errors), load the run unless a model is given, name the model.
    `max_concurrency` None: `default_concurrency(batching)`."""
    max_concurrency = default_concurrency(batching) if max_concurrency is None else max_concurrency
    for key, value, low in (
        ("max_tokens_cap", max_tokens_cap, 1), ("max_concurrency", max_concurrency, 1), ("max_queue", max_queue, 0),
        ("max_prompt_tokens", 1 if max_prompt_tokens is None else max_prompt_tokens, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise PsyDuckError(f"{key.replace('_', '-')} must be an integer >= {low}, got {value!r}")
    if isinstance(max_body_mb, bool) or not isinstance(max_body_mb, (int, float)) or not 0 < max_body_mb < 10**6:
        raise PsyDuckError(f"max-body-mb must be a number of megabytes above 0 (e.g. 8), got {max_body_mb!r}")
    if isinstance(stream_interval, bool) or not isinstance(stream_interval, (int, float)) or not 0 <= stream_interval <= 10:
        raise PsyDuckError(f"stream-interval must be a number of seconds from 0 to 10 (e.g. 0.05), got {stream_interval!r}")
    if engine not in ENGINES:
        raise PsyDuckError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "process" and not engine_process.available():
        raise PsyDuckError("engine 'process' needs a fork server, which this platform lacks; use 'thread' or 'auto'")
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
    elif isinstance(model, torch.nn.Module) and (problem := nonfinite_weights(model)) is not None:
        raise PsyDuckError(f"the weights of model {model_name or 'psyduck'} are not finite ({problem}); serve a model that trained well")
    assert tokenizer is not None
    model.eval()
    return ServeState(
        model, tokenizer, model_name or (run.resolve().name if run is not None else "psyduck"), run, api_key,
        max_tokens_cap, max_prompt_tokens or model.config.block_size, max_concurrency, max_queue,
        PAGE.read_text(encoding="utf-8"), max(1, int(max_body_mb * 10**6)), batching, load_template(run),
        float(stream_interval), engine,
    )
