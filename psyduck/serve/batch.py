"""`Batch`: the rows being generated, advanced together by one forward pass per step.

A `Job` is one request's generation: its prompts, `n` continuations of each, its own sampling
parameters, seed, stop strings and cancel flag. `Batch.join` turns a job into rows: each prompt is
prefilled on its own (one forward over the prompt, into a one-row `KVCache`) and copied into the
shared `RowCache` once per continuation. `Batch.step` then, for every row at once:

1. picks each row's next token from its logits, job by job (each job has its own generator, so a
   seeded request gives the same text whoever else is in the batch), and records its logprobs;
2. hands each job its new text (`Delta`s) and lets finished and cancelled rows leave;
3. feeds the remaining rows' new tokens through the model in one forward pass (the weights are
   read once for all rows: the point of batching on a memory-bound CPU).

A row whose window (block_size) is full drops its oldest half and is prefilled again, alone, as
the generation loop does. The server runs one `Batch` in its engine thread (engine.py), or one per
request in worker threads with `--batching off`: the same code, so both give the same tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from psyduck.generate import (
    DecodeWeights,
    GenerationParams,
    KVCache,
    TextStream,
    sample_next,
)
from psyduck.serve.rowcache import RowCache
from psyduck.tokenizer import Tokenizer


@dataclass
class TokenLogprob:
    """One token's log-probability under the model, and the `top` most likely (id, logprob) there."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Choice:
    """One finished (or stopped) continuation."""

    index: int
    text: str
    tokens: int  # completion tokens generated for this choice (the end-of-text token counts)
    finish_reason: str | None  # "stop" (end of text or a stop string), "length" (max_new_tokens), None (cancelled)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token, if the job asked


@dataclass
class Delta:
    """What one step adds to one choice: new text (maybe empty), its token's logprobs, whether it ended."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(eq=False)
class Job:
    """One request's generation: choice `i * n + j` is the j-th continuation of prompt i.

    `logprobs`: how many alternatives to report per token (0: only the chosen one's), or None for
    no logprobs; with `score_prompts` too, `join` fills `prompt_scores` (one list per prompt): the
    prompts' own logprobs, computed here, under the admission control, not in the request handler. `on_step` receives each step's deltas, in the generating thread. `future` ends
    with the choices: when every row finished, or at once when `cancel` is set.
    """

    prompts: list[list[int]]
    n: int
    params: GenerationParams
    cancel: threading.Event
    on_step: Callable[[list[Delta]], None] | None = None
    logprobs: int | None = None
    score_prompts: bool = False
    prompt_scores: list[list[TokenLogprob | None]] = field(default_factory=list)
    future: Future = field(default_factory=Future)
    choices: list[Choice] = field(default_factory=list)
    live: list[Row] = field(default_factory=list)  # rows still generating, in choice order
    generator: torch.Generator | None = None

    def done(self) -> None:
        """Every row has ended: hand the choices over (once)."""
        if not self.future.done():
            self.future.set_result(sorted(self.choices, key=lambda c: c.index))


@dataclass(eq=False)
class Row:
    """One continuation in the batch: its text so far, its context (for the window), its next logits."""

    job: Job
    index: int
    text: TextStream
    context: list[int]
    logits: torch.Tensor  # (V,) the next token's scores
    slot: int  # its row in the RowCache
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def choice(self) -> Choice:
        return Choice(self.index, self.text.text, self.text.tokens, self.text.finish_reason, self.logprobs)


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top: int) -> list[TokenLogprob]:
    """Each row's chosen token's log-probability under the model (before temperature and filters)
    and its `top` most likely alternatives. logits (B, V), chosen (B,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, chosen[:, None])[:, 0].tolist()
    values, ids = logp.topk(top, dim=-1) if top > 0 else (logp[:, :0], chosen[:, None][:, :0])
    return [
        TokenLogprob(int(t), lp, list(zip(i, v)))
        for t, lp, i, v in zip(chosen.tolist(), picked, ids.tolist(), values.tolist())
    ]


class Batch:
    """The rows of every job in progress; `step` advances them all by one token."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, weights: DecodeWeights) -> None:
        cfg = model.config
        self.model, self.tok, self.weights = model, tokenizer, weights
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        self.block_size = cfg.block_size
        self.cache = RowCache(cfg.n_layer, cfg.kv_heads, cfg.block_size, cfg.head_size, self.device, dtype)
        self.rows: list[Row] = []  # rows[r] lives in cache row r
        self.jobs: list[Job] = []

    @property
    def empty(self) -> bool:
        return not self.jobs

    def prefill(self, context: list[int]) -> tuple[KVCache, torch.Tensor]:
        """One context, alone, into a fresh one-row cache: (the cache, the next token's logits (V,))."""
        cache = KVCache.for_model(self.model, 1, self.device, self.cache.dtype)
        tokens = torch.tensor([context[-self.block_size :]], device=self.device)
        with torch.inference_mode():
            logits = self.weights.net(tokens, cache=cache)[0][0, -1]
            if self.weights.half and not bool(logits.isfinite().all()):
                self.weights = DecodeWeights.build(self.model, exact=True)  # float16 overflowed: exact from now on
                cache.reset()
                logits = self.weights.net(tokens, cache=cache)[0][0, -1]
        return cache, logits

    def join(self, job: Job) -> None:
        """Add a job's rows (its prompts prefilled here), or end it at once if it asks for no tokens."""
        params = job.params
        if job.score_prompts and job.logprobs is not None:
            job.prompt_scores = [prompt_logprobs(self.model, p, job.logprobs) for p in job.prompts]
        if params.seed is not None:
            job.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        for p, prompt in enumerate(job.prompts):
            texts = [TextStream(self.tok, params.stop, params.ignore_eos) for _ in range(job.n)]
            if params.max_new_tokens == 0 or job.cancel.is_set():
                job.choices += [Choice(p * job.n + j, "", 0, "length") for j in range(job.n)]
                continue
            cache, logits = self.prefill(prompt)
            for j, slot in enumerate(self.cache.put(cache, job.n)):
                row = Row(job, p * job.n + j, texts[j], list(prompt[-self.block_size :]), logits, slot)
                self.rows.append(row)
                job.live.append(row)
        if job.live:
            self.jobs.append(job)
        else:
            job.done()

    def step(self) -> None:
        """One token for every row: sample, report, let finished rows leave, one forward for the rest."""
        for job in list(self.jobs):
            if job.cancel.is_set():
                self.leave(job, list(job.live))
                continue
            deltas = self.sample(job)
            if job.on_step is not None:
                job.on_step(deltas)
            self.leave(job, [r for r in job.live if r.text.finished])
        if self.rows:
            self.forward()

    def sample(self, job: Job) -> list[Delta]:
        """Pick the next token of each of the job's rows (one draw from its generator) and push it."""
        params, rows = job.params, job.live
        logits = torch.stack([r.logits for r in rows])
        chosen = sample_next(logits, params.temperature, params.top_k, params.top_p, job.generator)
        scored = token_logprobs(logits, chosen, job.logprobs) if job.logprobs is not None else None
        deltas = []
        for i, (row, token) in enumerate(zip(rows, chosen.tolist())):
            last = row.text.tokens + 1 == params.max_new_tokens
            piece = row.text.push(token, last)
            row.context.append(token)
            mine = [scored[i]] if scored is not None else []
            row.logprobs += mine
            deltas.append(Delta(row.index, piece, row.text.finish_reason, mine))
        return deltas

    def leave(self, job: Job, rows: list[Row]) -> None:
        """Free the rows' cache rows now; a job whose rows have all left is done."""
        for row in rows:
            job.live.remove(row)
            job.choices.append(row.choice())
            moved = self.cache.remove(row.slot)
            last = self.rows.pop()
            if moved is not None:
                last.slot = row.slot
                self.rows[row.slot] = last
        if not job.live:
            self.jobs.remove(job)
            job.done()

    def forward(self) -> None:
        """Every row's newest token through the model at once (rows with a full window: alone, rolled)."""
        lengths = self.cache.length.tolist()  # one read (one device sync on a GPU), not one per row
        for row in self.rows:
            if lengths[row.slot] == self.block_size:  # full: keep the newest half
                row.context = row.context[-(self.block_size // 2 + 1) :]
                cache, row.logits = self.prefill(row.context)
                self.cache.replace(row.slot, cache)  # it holds the whole context: no token to feed
                lengths[row.slot] = len(row.context)
        stepping = [r for r in self.rows if lengths[r.slot] < len(r.context)]
        if not stepping:
            return
        tokens = torch.tensor([[r.context[-1]] for r in self.rows], device=self.device)
        logits = self.decode(tokens)
        for row in self.rows:
            if row in stepping:
                row.logits = logits[row.slot]
            else:  # rolled: its prefill fed the token already; forget the extra one
                self.cache.lengths[row.slot] = lengths[row.slot]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row (B, 1) through the model and the cache -> next logits (B, V).

        If float16 overflowed, the step is redone with exact weights, which the batch keeps."""
        before = self.cache.length.clone()
        self.cache.begin_step()
        with torch.inference_mode():
            logits = self.weights.net(tokens, cache=self.cache)[0][:, -1]
            if self.weights.half and not bool(logits.sum().isfinite()):
                self.cache.length = before
                self.weights = DecodeWeights.build(self.model, exact=True)
                self.cache.begin_step()
                logits = self.weights.net(tokens, cache=self.cache)[0][:, -1]
        return logits


def prompt_logprobs(model: torch.nn.Module, prompt: list[int], top: int) -> list[TokenLogprob | None]:
    """The prompt's own tokens scored by the model (exact weights, one forward): the first has none.

    Position t predicts token t + 1, so the last token is never fed: a prompt of block_size + 1
    tokens fits, as in the harness's own scoring (psyduck/tasks/)."""
    if len(prompt) < 2:
        return [None] * len(prompt)
    device = next(model.parameters()).device
    idx = torch.tensor([prompt], device=device)
    with torch.inference_mode():
        logits = model(idx[:, :-1])[0][0]
    return [None, *token_logprobs(logits, idx[0, 1:], top)]
