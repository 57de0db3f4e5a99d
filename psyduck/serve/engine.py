"""The part of the server that talks to the model: jobs in, tokens out, and who may run.

Nothing here knows about HTTP. The rows and the step live in batch.py (`Batch`, `Job`); here:

- `Engine` (batching on; on a CPU the same loop runs in a child process instead, engine_process.py):
  one thread runs one `Batch` for every request. Between steps it takes in the jobs that arrived
  (continuous batching: a request joins the running batch at once and leaves it when done, instead
  of waiting for the batch to end), their prompts prefilled together in one forward pass, then
  runs one step.
  A cancelled job (its client went away) leaves at the next step, and its rows are free at once.
- `run_alone` (`--batching off`): a job's own `Batch`, in the calling worker thread: one thread per
  request, competing for the cores. PyTorch releases the GIL inside its kernels either way, so the
  event loop keeps answering while the model computes.
- `Slots` is the admission control: at most `concurrency` requests generate at once, at most
  `queue` more wait (first come, first served); beyond that a request is refused at once.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch

from psyduck.generate import DecodeWeights
from psyduck.serve.batch import Batch, Job
from psyduck.tokenizer import Tokenizer


def run_alone(model: torch.nn.Module, tokenizer: Tokenizer, weights: DecodeWeights, job: Job) -> list:
    """Generate one job in this thread, in a batch of its own; returns its choices."""
    batch = Batch(model, tokenizer, weights)
    try:
        batch.join(job)
        while not batch.empty:
            batch.step()
    except BaseException as e:
        if not job.future.done():
            job.future.set_exception(e)
        raise
    return job.future.result()


class Engine:
    """One thread, one `Batch`: every job submitted joins it between two steps."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, weights: DecodeWeights) -> None:
        self.model, self.tok, self.weights = model, tokenizer, weights
        self.pending: list[Job] = []
        self.wake = threading.Condition()
        self.closed = False
        self.thread: threading.Thread | None = None

    def submit(self, job: Job) -> None:
        """Hand a job to the engine thread (started on the first one); `job.future` tells the end."""
        with self.wake:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            self.pending.append(job)
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="psyduck-engine", daemon=True)
                self.thread.start()
            self.wake.notify()

    def close(self) -> None:
        """Stop after the current step; jobs still running end with what they have (shutdown)."""
        with self.wake:
            self.closed = True
            self.wake.notify()

    def run(self) -> None:
        batch = Batch(self.model, self.tok, self.weights)
        while True:
            with self.wake:
                while not self.pending and batch.empty and not self.closed:
                    self.wake.wait()
                arrived, self.pending = self.pending, []
                if self.closed:
                    for job in [*batch.jobs, *arrived]:
                        job.cancel.set()
                    batch.step()  # cancelled jobs leave at once, with their choices so far
                    for job in arrived:
                        job.done()
                    return
            try:
                batch.join(*arrived)  # prefilled together; a job with a bad prompt ends alone
                batch.step()
            except Exception as e:  # noqa: BLE001  (a bug: fail what is running, start clean)
                for job in [*batch.jobs, *arrived]:
                    if not job.future.done():
                        job.future.set_exception(e)
                batch = Batch(self.model, self.tok, batch.weights)


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
