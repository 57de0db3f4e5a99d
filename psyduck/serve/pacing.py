"""Stream pacing: a streamed job's deltas handed to the event loop at most once per interval.

Every step of the batch gives each streaming request one `Delta` per choice, and each becomes a
server-sent event that the event loop encodes and writes and the client parses. On a CPU shared
by the server and its clients that per-event work, not the model, is what many concurrent
streams spend most on (docs/performance.md, "What 6x would take"). `Paced` collects the deltas of
the steps that arrive within `interval` seconds of the last hand-over and hands them on merged:
one event per choice carrying all their text (and logprobs), which OpenAI's chunk format allows.
The first step goes at once (time to first token is unchanged) and so does any step that ends a
choice; `interval` 0 hands on every step as it comes.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # batch.py needs torch; the CLI reads STREAM_INTERVAL without it
    from psyduck.serve.batch import Delta

STREAM_INTERVAL = 0.05  # seconds (`psyduck serve --stream-interval`): 20 events a second, smooth to a reader


def merge_deltas(steps: list[list[Delta]]) -> list[Delta]:
    """The deltas of consecutive steps as one step's: per choice (in order of first appearance),
    the texts and logprobs joined and the last finish reason."""
    if len(steps) == 1:
        return steps[0]
    merged: dict[int, Delta] = {}
    for deltas in steps:
        for d in deltas:
            m = merged.get(d.index)
            if m is None:
                merged[d.index] = dataclasses.replace(d, logprobs=list(d.logprobs))
            else:
                m.text += d.text
                m.logprobs += d.logprobs
                m.finish_reason = d.finish_reason or m.finish_reason
    return list(merged.values())


class Paced:
    """`push` (a job's `on_step`, in the engine thread) hands merged deltas to `post` at most once per
    `interval` seconds; `close` (the job's future's callback) hands on what is left, then the future."""

    def __init__(self, post: Callable[[Any], None], interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.post, self.interval, self.clock = post, interval, clock
        self.pending: list[list[Delta]] = []
        self.last = -math.inf  # when deltas were last handed on
        self.lock = threading.Lock()

    def push(self, deltas: list[Delta]) -> None:
        with self.lock:
            self.pending.append(deltas)
            now = self.clock()
            if now - self.last >= self.interval or any(d.finish_reason is not None for d in deltas):
                self.flush(now)

    def close(self, future: Future) -> None:
        with self.lock:
            if self.pending:
                self.flush(self.clock())
        self.post(future)

    def flush(self, now: float) -> None:
        self.post(merge_deltas(self.pending))
        self.pending = []
        self.last = now
