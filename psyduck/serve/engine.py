"""The part of the server that talks to the model: text in, text out, one token at a time.

Nothing here knows about HTTP. Two pieces (the decode loop itself and `TextStream`, which keeps
characters whole and cuts stop strings, live in psyduck/generate/):

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

from psyduck.generate import DecodeWeights, GenerationParams, TextStream, stream
from psyduck.tokenizer import Tokenizer


@dataclass
class Choice:
    """One finished (or stopped) continuation."""

    index: int
    text: str
    tokens: int  # completion tokens generated for this choice (the end-of-text token counts)
    finish_reason: str | None  # "stop" (end of text or a stop string), "length" (max_new_tokens), None (cancelled)


@dataclass
class Delta:
    """What one step of generation adds to one choice: new text (maybe empty), and whether it ended."""

    index: int
    text: str
    finish_reason: str | None = None


def generate(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    n: int,
    params: GenerationParams,
    cancel: threading.Event,
    on_step: Callable[[list[Delta]], None] | None = None,
    weights: DecodeWeights | None = None,
) -> list[Choice]:
    """Continue every prompt `n` times; choice `i * n + j` is the j-th continuation of prompt i.

    The n continuations of one prompt run as one batch of n rows. Prompts run one after another.
    `on_step` (if given) receives the new text of every unfinished choice after each token; it is
    called from this thread. Returns early, with what was generated so far, once `cancel` is set.
    `weights`: the server's `DecodeWeights`, built once for all requests (else once per prompt).
    """
    device = next(model.parameters()).device
    choices: list[Choice] = []
    for p, prompt in enumerate(prompts):
        rows = [TextStream(tokenizer, params.stop, params.ignore_eos) for _ in range(n)]
        if params.max_new_tokens > 0 and not cancel.is_set():
            idx = torch.tensor([prompt] * n, dtype=torch.long, device=device)  # (n, T)
            # no eot_id: the rows stop on their own below (a batch runs to its longest row)
            steps = stream(model, idx, params, weights=weights)
            try:
                for step, nxt in enumerate(steps):  # nxt: (n,) one new id per row
                    ids = nxt.tolist()
                    last = step + 1 == params.max_new_tokens
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
