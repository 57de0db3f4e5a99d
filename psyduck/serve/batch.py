"""`Batch`: the rows being generated, advanced together by one forward pass per step.

A `Job` is one request's generation: its prompts, `n` continuations of each, its own sampling
parameters, seed, stop strings and cancel flag. `Batch.join(*jobs)` turns the jobs that arrived
since the last step into rows: all their prompts are prefilled together, one forward pass over a
right-padded (N, T) batch (`padded_groups` splits prompts of very different lengths so that padding
at most doubles the work), and each prompt is copied into the shared `RowCache` once per
continuation. Padding changes nothing: attention is causal, so no prompt token sees the padding
after it, and each row's logits are read at its own last token. `Batch.step` then, for every row:

1. picks each row's next token from its logits: the rows of every job with the same sampling
   knobs in one `sample_next` call, each job's random numbers drawn from its own generator (so a
   seeded request gives the same text whoever else is in the batch), and records its logprobs;
2. hands each job its new text (`Delta`s) and lets finished and cancelled rows leave;
3. feeds the remaining rows' new tokens through the model in one forward pass (the weights are
   read once for all rows: the point of batching on a memory-bound CPU).

Rows whose window (block_size) is full drop their oldest half and are prefilled again, together,
as the generation loop does. The server runs one `Batch` in its engine thread (engine.py), or one
per request in worker threads with `--batching off`: the same code, so both give the same tokens.
A row computed inside a bigger matrix product than its lone run's (a shared prefill or step) can
differ from it in the last bits of its logits (BLAS sums in another order), never in its tokens
but by a near tie (tests/test_serve_engine.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from psyduck.errors import PsyDuckError
from psyduck.generate import (
    MIN_TEMPERATURE,
    DecodeWeights,
    GenerationParams,
    KVCache,
    TextStream,
    draw_uniforms,
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
    prompts' own logprobs, computed here, under the admission control, not in the request handler.
    `on_step` receives each step's deltas, in the generating thread. `future` ends with the
    choices: when every row finished, or at once when `cancel` is set.
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


PADDING_WASTE = 2.0  # a prefill's padded tokens stay within this many times its real tokens...
PREFILL_TOKENS = 8192  # ...and within this many (at least one prompt): activations stay small


def padded_groups(lengths: list[int]) -> list[list[int]]:
    """The indices of `lengths`, in groups to prefill together: longest first, a group taking the
    next while count x longest stays within PADDING_WASTE x its real tokens and PREFILL_TOKENS."""
    groups: list[list[int]] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        padded = (len(groups[-1]) + 1) * lengths[groups[-1][0]] if groups else 0
        if groups and padded <= PADDING_WASTE * (real + lengths[i]) and padded <= PREFILL_TOKENS:
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups


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
        self.decoded: torch.Tensor | None = None  # the last decode's logits, if every row's are its rows

    @property
    def empty(self) -> bool:
        return not self.jobs

    # -- prefill: prompts and rolled windows, several in one forward pass ----------------------
    def prefill(self, contexts: list[list[int]]) -> tuple[KVCache, torch.Tensor]:
        """Contexts (each cropped to the window) in one forward pass, right-padded: (their cache, one
        row each, as long as the longest; each one's next-token logits (N, V))."""
        contexts = [c[-self.block_size :] for c in contexts]
        width = max(map(len, contexts))
        tokens = torch.tensor([c + [self.tok.eot_id] * (width - len(c)) for c in contexts], device=self.device)
        last = torch.tensor([len(c) - 1 for c in contexts], device=self.device)
        cfg = self.model.config
        cache = KVCache(cfg.n_layer, (len(contexts), cfg.kv_heads, width, cfg.head_size), self.device, self.cache.dtype)
        with torch.inference_mode():
            logits = self.logits_at(tokens, last, cache)
            if self.weights.half and not bool(logits.isfinite().all()):
                self.weights = DecodeWeights.build(self.model, exact=True)  # float16 overflowed: exact from now on
                cache.reset()
                logits = self.logits_at(tokens, last, cache)
        return cache, logits

    def logits_at(self, tokens: torch.Tensor, last: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Tokens (N, T) through the model into `cache` -> the logits (N, V) after each row's `last` token.

        The model's own `body` and `logits` (what its forward runs with a cache), read at each row's
        own end instead of the batch's last column."""
        net = self.weights.net
        hidden = net.body(tokens, cache)  # (N, T, C)
        return net.logits(hidden[torch.arange(len(last), device=self.device), last])  # (N, V)

    def join(self, *jobs: Job) -> None:
        """Add the jobs' rows, every prompt among them prefilled together. A job that asks for no
        tokens (or is already cancelled) ends at once; one whose prompt scoring fails ends with
        that error alone; a failed prefill ends the jobs it was for."""
        starts: list[tuple[Job, int, list[int]]] = []  # (job, prompt number, prompt): what to prefill
        for job in jobs:
            try:
                starts += self.setup(job)
            except Exception as e:  # noqa: BLE001  (this job fails; the others join)
                job.future.set_exception(e)
        try:
            for group in padded_groups([min(len(p), self.block_size) for _, _, p in starts]):
                cache, logits = self.prefill([starts[i][2] for i in group])
                for source, i in enumerate(group):
                    self.add_rows(*starts[i], cache, source, logits[source])
        except Exception as e:  # noqa: BLE001  (out of memory, a bug: these jobs fail, the batch goes on)
            for job in jobs:
                self.fail(job, e)
            return
        for job in jobs:
            job.live.sort(key=lambda r: r.index)  # choice order: the order its generator draws in
            if job.live:
                self.jobs.append(job)
            elif not job.future.done():
                job.done()

    def setup(self, job: Job) -> list[tuple[Job, int, list[int]]]:
        """Check a joining job's prompts, score them if asked, seed its generator; returns the prompts
        to prefill (none if it asks for no tokens)."""
        params = job.params
        vocab = self.model.config.vocab_size
        for prompt in job.prompts:  # checked here, so that a bad prompt cannot fail the prefill it would share
            if not prompt:
                raise PsyDuckError("a prompt needs at least one token; start a new document with the end-of-text id")
            if not 0 <= min(prompt) <= max(prompt) < vocab:
                bad = next(i for i in prompt if not 0 <= i < vocab)
                raise PsyDuckError(f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})")
        if job.score_prompts and job.logprobs is not None:
            job.prompt_scores = [prompt_logprobs(self.model, p, job.logprobs) for p in job.prompts]
        if params.seed is not None:
            job.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        if params.max_new_tokens == 0 or job.cancel.is_set():  # nothing to generate: "length", or cancelled (None)
            reason = "length" if params.max_new_tokens == 0 else None
            job.choices += [Choice(i, "", 0, reason) for i in range(len(job.prompts) * job.n)]
            return []
        return [(job, p, prompt) for p, prompt in enumerate(job.prompts)]

    def add_rows(self, job: Job, p: int, prompt: list[int], cache: KVCache, source: int, logits: torch.Tensor) -> None:
        """The job's n rows for prompt `p`, their cache copied from row `source` of a prefill."""
        context = list(prompt[-self.block_size :])
        params = job.params
        self.decoded = None  # rows join: their logits are their prefill's
        for j, slot in enumerate(self.cache.put(cache, source, len(context), job.n)):
            text = TextStream(self.tok, params.stop, params.ignore_eos)
            row = Row(job, p * job.n + j, text, list(context), logits, slot)
            self.rows.append(row)
            job.live.append(row)

    # -- one step ------------------------------------------------------------------------------
    def step(self) -> None:
        """One token for every row: sample, report, let finished rows leave, one forward for the rest."""
        for job in [j for j in self.jobs if j.cancel.is_set()]:
            self.leave(job, list(job.live))
        if self.jobs:
            live = [r for job in self.jobs for r in job.live]
            logits = self.gathered(live)  # (B, V), job by job
            chosen = self.pick(logits)
            tokens = chosen.tolist()
            at = 0
            for job in list(self.jobs):
                end = at + len(job.live)
                deltas = self.advance(job, tokens[at:end], logits[at:end], chosen[at:end])
                at = end
                if job.on_step is not None:
                    job.on_step(deltas)
                self.leave(job, [r for r in job.live if r.text.finished])
        if self.rows:
            self.forward()

    def gathered(self, live: list[Row]) -> torch.Tensor:
        """The live rows' logits (B, V), job by job: the last decode's output itself when its rows
        are those, in that order (the usual step: no copy of B x V scores), else stacked."""
        decoded = self.decoded  # None since rows joined, left or rolled
        if decoded is not None and decoded.shape[0] == len(live) and all(r.slot == i for i, r in enumerate(live)):
            return decoded
        return torch.stack([r.logits for r in live])

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token (B,) of every live row (job by job): one `sample_next` call per set of
        sampling knobs, each job's random numbers drawn from its own generator, in choice order."""
        by_knobs: dict[tuple[float, int | None, float | None], list[tuple[int, Job]]] = {}
        at = 0
        for job in self.jobs:
            p = job.params
            by_knobs.setdefault((p.temperature, p.top_k, p.top_p), []).append((at, job))
            at += len(job.live)
        chosen = None if len(by_knobs) == 1 else torch.empty(at, dtype=torch.long, device=logits.device)
        for (temperature, top_k, top_p), members in by_knobs.items():
            uniform = None
            if temperature >= MIN_TEMPERATURE:  # greedy rows draw nothing
                uniform = torch.cat([draw_uniforms(len(job.live), job.generator, self.device) for _, job in members])
            if chosen is None:  # the usual case: one set of knobs, every row at once
                return sample_next(logits, temperature, top_k, top_p, uniform=uniform)
            index = torch.tensor([i for start, job in members for i in range(start, start + len(job.live))], device=logits.device)
            chosen[index] = sample_next(logits[index], temperature, top_k, top_p, uniform=uniform)
        assert chosen is not None
        return chosen

    def advance(self, job: Job, tokens: list[int], logits: torch.Tensor, chosen: torch.Tensor) -> list[Delta]:
        """Push each of the job's rows its chosen token (and logprobs, if asked); the deltas to send."""
        scored = token_logprobs(logits, chosen, job.logprobs) if job.logprobs is not None else None
        deltas = []
        for i, (row, token) in enumerate(zip(job.live, tokens)):
            last = row.text.tokens + 1 == job.params.max_new_tokens
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
            self.free(row)
        if not job.live:
            self.jobs.remove(job)
            job.done()

    def fail(self, job: Job, error: Exception) -> None:
        """End `job` with `error`, its rows freed."""
        for row in job.live:
            self.free(row)
        job.live.clear()
        if job in self.jobs:
            self.jobs.remove(job)
        if not job.future.done():
            job.future.set_exception(error)

    def free(self, row: Row) -> None:
        """Give the row's cache row back; the last row moves into it (rows stay packed)."""
        moved = self.cache.remove(row.slot)
        self.decoded = None  # rows move
        last = self.rows.pop()
        if moved is not None:
            last.slot = row.slot
            self.rows[row.slot] = last

    def forward(self) -> None:
        """Every row's newest token through the model at once (rows with a full window: rolled first)."""
        lengths = self.cache.length.tolist()  # one read (one device sync on a GPU), not one per row
        full = [r for r in self.rows if lengths[r.slot] == self.block_size]
        self.decoded = None
        if full:
            self.roll(full)
            if len(full) == len(self.rows):
                return  # every row's prefill fed its newest token already
        tokens = torch.tensor([[r.context[-1]] for r in self.rows], device=self.device)
        logits = self.decode(tokens)
        rolled = {r.slot for r in full}
        for row in self.rows:
            if row.slot in rolled:  # its prefill fed the token already: forget the extra one
                self.cache.lengths[row.slot] = len(row.context)
            else:
                row.logits = logits[row.slot]
        if not rolled:
            self.decoded = logits

    def roll(self, rows: list[Row]) -> None:
        """Rows whose window is full keep its newest half, prefilled again together (as the generation loop does)."""
        for row in rows:
            row.context = row.context[-(self.block_size // 2 + 1) :]
        for group in padded_groups([len(r.context) for r in rows]):
            cache, logits = self.prefill([rows[i].context for i in group])
            for source, i in enumerate(group):
                self.cache.replace(rows[i].slot, cache, source, len(rows[i].context))
                rows[i].logits = logits[source]

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
