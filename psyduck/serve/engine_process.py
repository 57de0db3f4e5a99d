"""`EngineProcess`: the batching engine in a process of its own, beside the event loop instead of
taking turns with it.

In one process, the engine thread's Python (most of a small model's step) and the event loop's
(requests parsed, events encoded and written) hold the same interpreter lock: serving 16 streams
on two cores, that process never used more than one, and the steps slowed by what the event loop
spent (docs/performance.md, "Serving"). vLLM runs its engine core in a separate process for the
same reason. Here a child process runs the same `Batch` (batch.py) as the engine thread does; this
side keeps the `Job`s, their callbacks and futures, and the two speak through one pipe:

    to the child    ("job", id, prompts, n, params, logprobs, score_prompts), ("cancel", id), None: stop
    from the child  lists of ("scores", id, prompt_scores), ("step", id, deltas), ("done", id,
                    choices) and ("error", id, kind, message): up to COALESCE_S of steps in one

A reader thread here hands the deltas to each job's `on_step` and ends the futures, and passes on
the cancel flags it finds set (a job's rows leave at the child's next step); a writer thread
sends. The child is forked from multiprocessing's fork server, which imported torch once before
this process had threads, and it maps the model's tensors from shared memory instead of copying
them. If the child dies, the jobs in flight fail with one line and the next job starts a new child.
"""

from __future__ import annotations

import atexit
import multiprocessing
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import torch

from psyduck.errors import PsyDuckError
from psyduck.serve.batch import Job
from psyduck.tokenizer import Tokenizer

CONTEXT = "forkserver"  # no fork of a process with threads, no re-import of the server per child (spawn)
WRITER_STOP = object()  # ends a writer thread whose child is gone
COALESCE_S = 0.02  # a step's deltas wait up to this long to go with the next steps': fewer wake-ups here
ERRORS: dict[str, type[Exception]] = {"PsyDuckError": PsyDuckError, "ValueError": ValueError}


def available() -> bool:
    """Whether this platform has a fork server (Linux, macOS; not Windows: the engine stays a thread)."""
    return CONTEXT in multiprocessing.get_all_start_methods()


def error_message(job_id: int, e: BaseException) -> tuple:
    kind = "PsyDuckError" if isinstance(e, PsyDuckError) else "ValueError" if isinstance(e, ValueError) else "RuntimeError"
    return ("error", job_id, kind, str(e) or type(e).__name__)


def child_main(conn: Connection, model: torch.nn.Module, tok: Tokenizer, threads: int) -> None:
    """The child: jobs in, message lists out (a first token or an end at once), until told to stop
    or the parent is gone."""
    from psyduck.generate import DecodeWeights
    from psyduck.serve.batch import Batch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server stops us
    torch.set_num_threads(threads)  # the parent's choice (decode_threads); a forked-server child starts afresh
    weights = DecodeWeights.build(model, batched=True)
    batch = Batch(model, tok, weights)
    conn.send([("ready", -1)])
    jobs: dict[int, Job] = {}
    out: list[tuple] = []
    fresh: set[int] = set()  # jobs whose first deltas have not been sent
    sent = time.monotonic()

    def ended(job_id: int, future: Any) -> None:
        jobs.pop(job_id, None)
        error = future.exception()
        out.append(error_message(job_id, error) if error is not None else ("done", job_id, future.result()))

    while True:
        arrived: list[tuple[int, Job]] = []
        stop = False
        try:
            while conn.poll(None if batch.empty and not arrived else 0):  # idle: wait; busy: take what came
                msg = conn.recv()
                if msg is None:
                    stop = True
                    break
                if msg[0] == "cancel":
                    if (job := jobs.get(msg[1])) is not None:
                        job.cancel.set()
                    continue
                _, job_id, prompts, n, params, logprobs, score_prompts = msg
                job = Job(prompts, n, params, threading.Event(), None, logprobs, score_prompts)
                job.on_step = lambda deltas, i=job_id: out.append(("step", i, deltas))
                job.future.add_done_callback(lambda f, i=job_id: ended(i, f))
                jobs[job_id] = job
                fresh.add(job_id)
                arrived.append((job_id, job))
        except (EOFError, OSError):  # the parent is gone
            return
        if stop:
            for job in [*jobs.values()]:
                job.cancel.set()
        try:
            batch.join(*(job for _, job in arrived))
            scores = [("scores", i, job.prompt_scores) for i, job in arrived if job.score_prompts and job.prompt_scores]
            out[:0] = scores  # before the jobs' first deltas (or their end, if they asked for no tokens)
            batch.step()
        except Exception as e:  # noqa: BLE001  (a bug: fail what is running, start clean, as engine.py does)
            for job in [*batch.jobs, *(job for _, job in arrived)]:
                if not job.future.done():
                    job.future.set_exception(e)
            batch = Batch(model, tok, batch.weights)
        now = time.monotonic()
        urgent = any(m[0] != "step" or m[1] in fresh for m in out)  # a first token, an end: at once
        if out and (urgent or stop or batch.empty or now - sent >= COALESCE_S):
            try:
                conn.send(out)
            except (BrokenPipeError, OSError):
                return
            out, sent = [], now
            fresh.clear()
        if stop:
            return


@dataclass(eq=False)
class Child:
    """One child process and what this side keeps for it: its jobs, and the messages waiting to go
    to it (a writer thread sends them, so that neither the event loop nor the reader ever blocks on
    a full pipe while the child is blocked sending to us)."""

    process: Any
    conn: Connection
    jobs: dict[int, Job] = field(default_factory=dict)
    forwarded: set[int] = field(default_factory=set)  # jobs whose cancel the child was told
    outbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    alive: bool = True
    threads: list[threading.Thread] = field(default_factory=list)  # its writer and reader

    def write(self) -> None:
        """The writer thread: the outbox to the pipe, until the stop message (None) or a dead pipe."""
        while (msg := self.outbox.get()) is not WRITER_STOP:
            try:
                self.conn.send(msg)
            except OSError:
                return
            if msg is None:
                return


class EngineProcess:
    """`Engine`'s interface (`submit`, `close`) over a child process that runs the batch."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
        self.model, self.tok = model, tokenizer
        self.child: Child | None = None
        self.next_id = 0
        self.lock = threading.Lock()  # guards `child` and its jobs: submit (event loop) and the reader thread
        self.closed = False
        self.stop_at_exit = False  # `stop` registered with atexit (on the first start)

    @property
    def process(self) -> Any:
        return None if self.child is None else self.child.process

    def start(self) -> Child:
        """Start a child and wait until it is ready (the first time, the fork server too: a few
        seconds, importing torch). A child that dies first is one line, with the usual cause."""
        import torch.multiprocessing  # noqa: F401  (registers the pickling of tensors through shared memory)

        ctx = multiprocessing.get_context(CONTEXT)
        ctx.set_forkserver_preload(["torch", "psyduck.serve.batch", "psyduck.generate"])
        ours, theirs = ctx.Pipe()
        process = ctx.Process(
            target=child_main, args=(theirs, self.model, self.tok, torch.get_num_threads()), name="psyduck-engine", daemon=True,
        )
        try:
            process.start()
            theirs.close()
            ready = ours.recv()[0][0] == "ready"
        except (EOFError, OSError, RuntimeError):
            ready = False
        if not ready:
            process.join(timeout=5)
            raise PsyDuckError(
                f"the serving engine's process did not start (exit status {process.exitcode}); a script that "
                "serves must build the app under `if __name__ == '__main__':`, or serve with engine='thread'"
            )
        child = self.child = Child(process, ours)
        child.threads = [threading.Thread(target=child.write, name="psyduck-engine-writer", daemon=True),
                         threading.Thread(target=self.read, args=(child,), name="psyduck-engine-reader", daemon=True)]
        for thread in child.threads:
            thread.start()
        if not self.stop_at_exit:
            self.stop_at_exit = True
            atexit.register(self.stop)  # before multiprocessing's own exit handler kills the child
        return child

    def submit(self, job: Job) -> None:
        """Send a job to the child (started on the first job, and after a child died); `job.future`
        tells the end."""
        with self.lock:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            child = self.child if self.child is not None and self.child.alive else self.start()
            job_id, self.next_id = self.next_id, self.next_id + 1
            child.jobs[job_id] = job
            child.outbox.put(("job", job_id, job.prompts, job.n, job.params, job.logprobs, job.score_prompts))

    def close(self) -> None:
        """Ask the child to stop after its current step; jobs still running end with what they have."""
        with self.lock:
            self.closed = True
            if self.child is not None:
                self.child.outbox.put(None)

    def stop(self, timeout: float = 10.0) -> None:
        """`close`, then wait for the child and for this side's threads to end. At exit: a reader
        thread still running while the interpreter finalizes aborted the process ("terminate called
        without an active exception", exit status 134) in 2 of 8 exits of a probe, 2 of 3 of a test file."""
        self.close()
        child = self.child
        if child is None:
            return
        child.process.join(timeout)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(timeout)
        for thread in child.threads:
            thread.join(timeout)

    def read(self, child: Child) -> None:
        """The reader thread: the child's messages to its jobs, and set cancel flags to the child;
        when the child is gone, its unfinished jobs fail with one line."""
        try:
            while True:
                for msg in child.conn.recv():
                    self.deliver(child, msg)
                self.forward_cancels(child)
        except (EOFError, OSError):
            pass
        child.process.join(timeout=5)
        with self.lock:
            child.alive = False  # the next job starts a new child
            failed, child.jobs = child.jobs, {}
        child.outbox.put(WRITER_STOP)
        status = child.process.exitcode
        for job in failed.values():
            if not job.future.done():
                job.future.set_exception(RuntimeError(f"the engine process stopped (exit status {status}); retry the request"))

    def deliver(self, child: Child, msg: tuple) -> None:
        kind, job_id = msg[0], msg[1]
        job = child.jobs.get(job_id)
        if job is None:
            return
        if kind == "step":
            if job.on_step is not None:
                job.on_step(msg[2])
        elif kind == "scores":
            job.prompt_scores = msg[2]
        else:
            with self.lock:
                child.jobs.pop(job_id, None)
                child.forwarded.discard(job_id)
            if kind == "done":
                job.choices = msg[2]
                job.done()
            else:
                job.future.set_exception(ERRORS.get(msg[2], RuntimeError)(msg[3]))

    def forward_cancels(self, child: Child) -> None:
        with self.lock:
            for job_id, job in child.jobs.items():
                if job.cancel.is_set() and job_id not in child.forwarded:
                    child.forwarded.add(job_id)
                    child.outbox.put(("cancel", job_id))
