"""The part of the server that talks to the model: text in, text out, one token at a time.

Nothing here knows about HTTP. Three pieces:

- `TextStream` turns one row's new token ids into text that is safe to show: it waits for the rest
  of a multi-byte character split across tokens, and holds back text that might be the start of a
  stop sequence (so a client never sees part of "\\n\\n" before the server decides to stop there).
- `generate` runs a whole request (one or more prompts, `n` choices each) in the calling thread,
  which the server makes a worker thread: PyTorch releases the GIL inside its kernels, so the event
  loop keeps answering while the model computes. It checks a `threading.Event` between tokens, so a
  client that goes away stops the work within one token.
- `Slots` is the admission control: at most `concurrency` generations run at once, at most `queue`
  more wait (first come, first served); beyond that a request is refused at once instead of piling up.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch

from psyduck.tokenizer import Tokenizer

# A temperature this small is greedy decoding in all but name; dividing logits by it would overflow
# float32 into inf and NaN probabilities, so it is treated as 0.
MIN_TEMPERATURE = 1e-6
# top_p this small keeps only the likeliest token anyway; a denormal like 5e-324 becomes 0 in float32,
# and sampling.sample_next would then drop every token and sample from NaN probabilities.
MIN_TOP_P = 1e-6
# A character is at most 4 UTF-8 bytes, so at most 4 byte-level tokens; text that still does not
# decode after this many tokens is invalid UTF-8 and is shown as U+FFFD rather than held forever.
MAX_PENDING_TOKENS = 4


@dataclass(frozen=True)
class SamplingParams:
    """How to continue a prompt: the knobs of `GPT.generate_stream`, plus when to stop."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep going past <|endoftext|>: exactly max_tokens unless a stop string


@dataclass
class Choice:
    """One finished (or stopped) continuation."""

    index: int
    text: str
    tokens: int  # completion tokens generated for this choice (the end-of-text token counts)
    finish_reason: str | None  # "stop" (end of text or a stop string), "length" (max_tokens), None (cancelled)


@dataclass
class Delta:
    """What one step of generation adds to one choice: new text (maybe empty), and whether it ended."""

    index: int
    text: str
    finish_reason: str | None = None


class TextStream:
    """One row's ids -> text, with multi-byte characters kept whole and stop strings cut out."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = (), ignore_eos: bool = False) -> None:
        self.tok = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ignore_eos = ignore_eos
        self.text = ""  # every character decoded so far (cut at a stop string once one is found)
        self.sent = 0  # how much of `text` has been handed out
        self.pending: list[int] = []  # ids whose bytes do not yet make whole characters
        self.checked = 0  # `text` before this offset is known to contain no stop string
        self.tokens = 0
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int, last: bool = False) -> str:
        """Add one generated id; returns the text that may be shown now. `last`: max_tokens reached."""
        if self.finished:
            return ""
        self.tokens += 1
        if token == self.tok.eot_id and not self.ignore_eos:
            return self._finish("stop")
        if token != self.tok.eot_id:  # with ignore_eos the marker itself is not shown
            self.pending.append(token)
        piece = self.tok.decode(self.pending)
        if not piece.endswith("\ufffd") or len(self.pending) >= MAX_PENDING_TOKENS:
            self.text += piece
            self.pending = []
        if self._cut_at_stop():
            return self._finish("stop")
        if last:
            return self._finish("length")
        end = len(self.text) - self._held_back()
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out

    def _finish(self, reason: str) -> str:
        if self.pending:  # the end came inside a character: show what there is (U+FFFD)
            self.text += self.tok.decode(self.pending)
            self.pending = []
            if self._cut_at_stop():
                reason = "stop"
        self.finish_reason = reason
        out, self.sent = self.text[self.sent :], len(self.text)
        return out

    def _cut_at_stop(self) -> bool:
        """Truncate `text` before the first stop string, if one has appeared; True if so."""
        if not self.stop:
            return False
        start = max(0, self.checked - max(map(len, self.stop)) + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        self.checked = len(self.text)
        if not hits:
            return False
        self.text = self.text[: min(hits)]
        return True

    def _held_back(self) -> int:
        """Length of the longest end of `text` that could still grow into a stop string."""
        for k in range(min(len(self.text), max(map(len, self.stop), default=0) - 1), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0


def effective_temperature(t: float) -> float:
    return 0.0 if t < MIN_TEMPERATURE else t


def effective_top_p(p: float | None) -> float | None:
    return None if p is None else max(p, MIN_TOP_P)


def generate(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    n: int,
    params: SamplingParams,
    cancel: threading.Event,
    on_step: Callable[[list[Delta]], None] | None = None,
) -> list[Choice]:
    """Continue every prompt `n` times; choice `i * n + j` is the j-th continuation of prompt i.

    The n continuations of one prompt run as one batch of n rows. Prompts run one after another.
    `on_step` (if given) receives the new text of every unfinished choice after each token; it is
    called from this thread. Returns early, with what was generated so far, once `cancel` is set.
    """
    device = next(model.parameters()).device
    choices: list[Choice] = []
    for p, prompt in enumerate(prompts):
        rows = [TextStream(tokenizer, params.stop, params.ignore_eos) for _ in range(n)]
        if params.max_tokens > 0 and not cancel.is_set():
            idx = torch.tensor([prompt] * n, dtype=torch.long, device=device)  # (n, T)
            steps = model.generate_stream(
                idx, params.max_tokens, effective_temperature(params.temperature), params.top_k, effective_top_p(params.top_p),
                params.seed, eot_id=None,  # rows stop on their own below: a batch must run to its longest row
            )
            try:
                for step, nxt in enumerate(steps):  # nxt: (n,) one new id per row
                    ids = nxt.tolist()
                    last = step + 1 == params.max_tokens
                    deltas = []
                    for j, (row, t) in enumerate(zip(rows, ids)):
                        if not row.finished:
                            text = row.push(int(t), last)
                            deltas.append(Delta(p * n + j, text, row.finish_reason))
                    if on_step is not None:
                        on_step(deltas)
                    if cancel.is_set() or all(r.finished for r in rows):
                        break
            finally:
                steps.close()
        choices += [Choice(p * n + j, r.text, r.tokens, r.finish_reason) for j, r in enumerate(rows)]
        if cancel.is_set():
            break
    return choices


class Overloaded(Exception):
    """Every slot is busy and the queue is full."""


class ClientGone(Exception):
    """The client disconnected while its request waited for a slot."""


@dataclass
class Slots:
    """At most `concurrency` generations at once, at most `queue` waiting, first come first served.

    Used from the event loop only (`release` from a worker must go through `call_soon_threadsafe`).
    """

    concurrency: int
    queue: int
    active: int = 0
    _waiters: collections.deque = field(default_factory=collections.deque)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, is_disconnected: Callable[[], Awaitable[bool]], poll_s: float = 0.25) -> None:
        """Take a slot, waiting in line if needed. Raises Overloaded or ClientGone."""
        if self.active < self.concurrency and not self._waiters:
            self.active += 1
            return
        if self.waiting >= self.queue:
            raise Overloaded
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=poll_s)
                if done:
                    return  # `release` handed its slot to us
                if await is_disconnected():
                    raise ClientGone
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # a slot arrived just as we gave up: pass it on
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the first one waiting, or to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1
