"""Documents -> token ids in the shard files: the part of prepare that uses every core.

Documents are grouped into ~BATCH_BYTES batches, encoded on a thread pool (tiktoken and HF
tokenizers release Python's lock while they work) with a few batches in flight, and appended in
order to the shard files. Ids go from the tokenizer into numpy arrays directly, never one Python
int per token. A document longer than PIECE_CHARS is encoded in pieces cut where a line starts
after a newline, a point no pre-token of cl100k_base, GPT-2 or our byte-level BPE crosses, so the
ids are those of the whole text. Every document's ids are followed by the end-of-text id.

The results never depend on the number of threads: batches are cut by text size alone, written
in the order they were made, and the ``max_tokens`` stop is decided batch by batch in that order
(the first batch that brings the train split to max_tokens is the last train batch written).
Every `commit_bytes` of text, after writing a batch that ends with a whole document, the encoder
makes what was written durable and calls `checkpoint(documents, counts, train_full)` to record it, so a resumed
prepare can continue from exactly there; the other threads keep encoding meanwhile.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from psyduck.data.document import Document
from psyduck.data.shards import ShardWriter
from psyduck.tokenizer import Tokenizer

BATCH_BYTES = 1 << 20  # text per encoding task: large enough to amortize, small enough to bound memory
PIECE_CHARS = 1 << 20  # longer documents are encoded in pieces of about this many characters
_LINE_START = re.compile(r"\n(?=\S)")  # a newline followed by a non-space: a safe place to cut


def pieces(text: str) -> Iterator[tuple[str, bool]]:
    """(piece, is_last) cutting a long document at line starts every PIECE_CHARS or so (see above)."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = _LINE_START.search(text, start + PIECE_CHARS)
        if cut is None:
            break
        yield text[start : cut.end()], False
        start = cut.end()
    yield text[start:], True


@dataclass
class Batch:
    """One encoding task: (split, piece, ends_document) items and the counts of the documents it ends."""

    items: list[tuple[str, str, bool]] = field(default_factory=list)
    chars: int = 0
    nbytes: int = 0
    stats: dict[str, list[int]] = field(default_factory=dict)  # split -> [bytes, documents, words]
    words: set[str] = field(default_factory=set)  # splits whose documents carry word counts
    ends_at: int | None = None  # when the batch ends with a whole document: how many documents precede its end

    def full(self) -> bool:
        return self.chars >= BATCH_BYTES

    def add(self, doc: Document, piece: str, last: bool) -> None:
        split = doc.split
        assert split is not None
        self.items.append((split, piece, last))
        self.chars += len(piece)
        if last:
            nbytes = len(doc.text.encode("utf-8"))
            counts = self.stats.setdefault(split, [0, 0, 0])
            counts[0] += nbytes
            counts[1] += 1
            self.nbytes += nbytes
            if doc.words is not None:
                counts[2] += doc.words
                self.words.add(split)


def encode_batch(tok: Tokenizer, batch: Batch, dtype: np.dtype) -> list[tuple[str, np.ndarray]]:
    """A worker's task: one id array per run of one split, end-of-text after each document's last piece."""
    eot = np.array([tok.eot_id], dtype=np.uint32)
    runs: list[tuple[str, list[np.ndarray]]] = []
    for (split, _, ends), ids in zip(batch.items, tok.encode_to_arrays([t for _, t, _ in batch.items]), strict=True):
        if not runs or runs[-1][0] != split:
            runs.append((split, []))
        runs[-1][1].append(ids)
        if ends:
            runs[-1][1].append(eot)
    return [(split, np.concatenate(parts).astype(dtype, copy=False)) for split, parts in runs]


class Encoder:
    """Encodes batches on a thread pool and writes their ids, in order, to one ShardWriter per split.

    `max_tokens` caps the train split (see the module docstring); then `train_full` is set, and
    with `stop_all` (a source without its own splits, whose val documents are interleaved with the
    train ones) everything after that batch is dropped too (`stopped`).
    """

    def __init__(
        self, folder: Path, tok: Tokenizer, dtype: np.dtype, shard_tokens: int, threads: int,
        writers: dict[str, ShardWriter], max_tokens: int | None, stop_all: bool, train_full: bool = False,
        commit_bytes: int | None = None, checkpoint: Callable[[int, dict[str, dict], bool], None] | None = None,
    ) -> None:
        self.folder, self.tok, self.dtype, self.shard_tokens = folder, tok, dtype, shard_tokens
        self.writers, self.max_tokens, self.stop_all = writers, max_tokens, stop_all
        self.train_full = train_full
        self.stopped = train_full and stop_all
        self.threads = threads
        self.commit_bytes, self.checkpoint, self._since = commit_bytes, checkpoint, 0
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="psyduck-encode")
        self._pending: deque[tuple[Future, Batch]] = deque()

    def submit(self, batch: Batch) -> int:
        """Queue a batch; write finished ones while too many are in flight. Returns text bytes written."""
        self._pending.append((self._pool.submit(encode_batch, self.tok, batch, self.dtype), batch))
        return self.drain(keep=2 * self.threads)  # enough queued to keep every core busy, no more

    def drain(self, keep: int = 0) -> int:
        """Write finished batches in order until at most `keep` remain in flight; returns their text bytes."""
        done = 0
        while len(self._pending) > keep:
            future, batch = self._pending.popleft()
            results = future.result()
            if self.stopped:
                continue
            full_before = self.train_full
            for split, ids in results:
                if not (split == "train" and full_before):
                    self._writer(split).write(ids)
            for split, (nbytes, docs, words) in batch.stats.items():
                if not (split == "train" and full_before):
                    w = self._writer(split)
                    w.bytes, w.documents = w.bytes + nbytes, w.documents + docs
                    if split in batch.words:
                        w.words = (w.words or 0) + words
            done += batch.nbytes
            if self.max_tokens is not None and "train" in self.writers and self.writers["train"].tokens >= self.max_tokens:
                self.train_full = True
                self.stopped = self.stop_all
            self._since += batch.nbytes
            if self.checkpoint and batch.ends_at is not None and self.commit_bytes and self._since >= self.commit_bytes:
                self.checkpoint(batch.ends_at, self.commit(), self.train_full)
                self._since = 0
        return done

    def _writer(self, split: str) -> ShardWriter:
        if split not in self.writers:
            self.writers[split] = ShardWriter(self.folder, split, self.dtype, self.shard_tokens)
        return self.writers[split]

    def commit(self) -> dict[str, dict]:
        """Make every written id durable; returns each split's counts (to record as progress)."""
        for writer in self.writers.values():
            writer.flush()
        return {split: w.summary() for split, w in self.writers.items()}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for writer in self.writers.values():
            writer.close()
