"""Text -> token shards: run the tokenizer once, so training only ever reads integers.

Tokenizing is slow next to training's need for data (a training step wants thousands of tokens in
microseconds), so it happens once, ahead of time, and the result goes to disk as plain arrays that
the loader memory-maps. `prepare` writes one folder in the format of shards.py: the tokenizer
(trained here for bpe-<N>, on the train split only), the split shards, and meta.json last.

Design choices:
- Every document's tokens are followed by the end-of-text id, so the model learns where texts end
  and the loader can tell documents apart.
- Splits: a source with its own split (WikiText: train / validation / test) keeps it. Otherwise the
  split is per document, from a seeded permutation: the same source, seed and fraction give
  byte-identical shards on every run. Validation gets round(n * val_fraction) documents, at least 1
  and at most n - 1. A corpus of a single document is cut in two by characters instead (at the last
  paragraph break, else line break, else space, before the cut point).
- A BPE is trained on the train documents only, so validation text stays unseen (a fair val loss).
- Streaming, bounded memory whatever the corpus size: documents are grouped into ~1 MB batches,
  encoded on every core by a thread pool (tiktoken and HF tokenizers release Python's lock while
  they work) with a few batches in flight, and appended in order to the shard files. Ids go from
  the tokenizer into numpy arrays directly, never one Python int per token. A document longer than
  PIECE_CHARS is encoded in pieces cut where a line starts after a newline, a point no pre-token of
  cl100k_base or of our byte-level BPE crosses, so the ids are those of the whole text.
- Progress on stderr: a bar of text bytes tokenized, with MB/s.
- ``bytes`` in meta.json counts the UTF-8 bytes of each split's text: dividing a summed loss (in bits)
  by it gives bits per byte, a metric that compares models with different tokenizers. ``words``
  (WikiText only) is the split's word count for word-level perplexity (see wikitext.py).
- A killed prepare leaves no meta.json (old one removed first, new one written atomically last), so
  the loader refuses the half-written folder instead of training on it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from psyduck.data.document import Document, documents
from psyduck.data.shards import FORMAT, SHARD_TOKENS, SPLITS, WORD_COUNT, ShardWriter, dtype_name, token_dtype
from psyduck.data.sources import SourceOptions, open_source
from psyduck.errors import PsyDuckError
from psyduck.tokenizer import Tokenizer, bpe_vocab_size, make_tokenizer

BATCH_BYTES = 1 << 20  # text per encoding task: large enough to amortize, small enough to bound memory
PIECE_CHARS = 1 << 20  # longer documents are encoded in pieces of about this many characters
_LINE_START = re.compile(r"\n(?=\S)")  # a newline followed by a non-space: a safe place to cut


def cpu_count() -> int:
    """The cores this process may use (its CPU affinity where the OS tells, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cut_point(text: str, fraction: float) -> int:
    """Where to cut a lone document so that about `fraction` of it goes to validation.

    Prefers a paragraph break, then a line break, then a space, within the second half before the
    target; returns an index in [1, len(text) - 1], so both pieces are non-empty.
    """
    target = min(len(text) - 1, max(1, round(len(text) * (1 - fraction))))
    for boundary in ("\n\n", "\n", " "):
        at = text.rfind(boundary, target // 2, target)
        if at > 0:
            return at
    return target


class _Plan:
    """Which document goes to which split, and how much text there is."""

    def __init__(self, source: str, path: str | None, options: SourceOptions, val_fraction: float, seed: int) -> None:
        self.source, self.path, self.options = source, path, options
        raw = open_source(source, path, options)  # mistakes in source or path raise here
        docs = documents(raw)
        first = next(docs, None)
        if first is None:
            where = path if path is not None else source
            raise PsyDuckError(f"corpus is empty: {where} holds no text; point --path at a file or folder with text")
        self.own_splits = first.split is not None
        self.single: tuple[str, str] | None = None  # (train text, val text) for a lone document
        self.is_val = np.zeros(0, dtype=bool)
        self._open: Iterator[Document] | None = None
        if self.own_splits:  # stream straight away: no counting pass
            self.total_bytes: int | None = getattr(raw, "size_hint", None)
            self._open = itertools.chain([first], docs)
            return
        count, self.total_bytes = 1, len(first.text.encode("utf-8"))
        for doc in docs:
            count, self.total_bytes = count + 1, self.total_bytes + len(doc.text.encode("utf-8"))
        if count == 1:
            if len(first.text) < 2:
                raise PsyDuckError(
                    "corpus is too small to split into train and val: it holds 1 character; use more text"
                )
            cut = _cut_point(first.text, val_fraction)
            self.single = (first.text[:cut].rstrip(), first.text[cut:].lstrip())
        else:
            n_val = min(count - 1, max(1, round(count * val_fraction)))
            self.is_val = np.zeros(count, dtype=bool)
            self.is_val[np.random.default_rng(seed).permutation(count)[:n_val]] = True

    def documents(self) -> Iterator[Document]:
        """Every document with its split set, in source order (each call reads the source again)."""
        if self.single is not None:
            yield Document(self.single[0], "train")
            yield Document(self.single[1], "val")
            return
        docs, self._open = self._open or documents(open_source(self.source, self.path, self.options)), None
        if self.own_splits:
            for doc in docs:
                if doc.split not in SPLITS:
                    raise ValueError(f"source {self.source} gave a document with split {doc.split!r}")
                yield doc
        else:
            for i, doc in enumerate(docs):
                yield doc._replace(split="val" if self.is_val[i] else "train")

    def train_texts(self) -> Iterator[str]:
        return (doc.text for doc in self.documents() if doc.split == "train")


def _pieces(text: str) -> Iterator[tuple[str, bool]]:
    """(piece, is_last) cutting a long document at line starts every PIECE_CHARS or so (see above)."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = _LINE_START.search(text, start + PIECE_CHARS)
        if cut is None:
            break
        yield text[start : cut.end()], False
        start = cut.end()
    yield text[start:], True


def _encode(tok: Tokenizer, batch: list[tuple[str, str, bool]], dtype: np.dtype) -> list[tuple[str, np.ndarray]]:
    """A worker's task: ids of (split, piece, ends_document) items, one array per run of one split,
    with the end-of-text id after each document's last piece."""
    eot = np.array([tok.eot_id], dtype=np.uint32)
    runs: list[tuple[str, list[np.ndarray]]] = []
    for (split, _, ends), ids in zip(batch, tok.encode_to_arrays([text for _, text, _ in batch]), strict=True):
        if not runs or runs[-1][0] != split:
            runs.append((split, []))
        runs[-1][1].append(ids)
        if ends:
            runs[-1][1].append(eot)
    return [(split, np.concatenate(parts).astype(dtype, copy=False)) for split, parts in runs]


def _clear(out: Path) -> None:
    """Remove what a previous prepare wrote here (meta.json first: the folder stops looking complete)."""
    (out / "meta.json").unlink(missing_ok=True)
    for split in SPLITS:
        for shard in out.glob(f"{split}_*.bin"):
            shard.unlink()


def _write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file, then rename it over `path`: readers see all of it or none."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare(
    source: str,
    tokenizer: str | Tokenizer,
    out: str | Path,
    *,
    path: str | None = None,
    options: SourceOptions | None = None,
    val_fraction: float = 0.05,
    seed: int = 1337,
    show_progress: bool = True,
    shard_tokens: int = SHARD_TOKENS,
    threads: int | None = None,
) -> Path:
    """Tokenize a source into split shards in folder `out` (see the module docstring); returns `out`.

    `options` are what the source needs beyond its path (the text field of records, an encoding).
    `val_fraction` and `seed` choose the validation documents of sources without their own split.
    `threads` encoding threads (default: every core this process may use).
    """
    if not 0 < val_fraction < 1:
        raise PsyDuckError(f"val_fraction must be between 0 and 1, got {val_fraction}; try 0.05")
    if isinstance(tokenizer, str):
        bpe_vocab_size(tokenizer)  # reject an unknown spec before reading any text
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PsyDuckError(f"--out {out} is a file; choose a folder name")
    plan = _Plan(source, path, options or SourceOptions(), val_fraction, seed)

    if isinstance(tokenizer, str):
        if show_progress and bpe_vocab_size(tokenizer) is not None:
            tqdm.write(f"training {tokenizer} on the train split...", file=sys.stderr)
        tok = make_tokenizer(tokenizer, plan.train_texts())
    else:
        tok = tokenizer
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    tok.save(out)

    dtype = token_dtype(tok.vocab_size)
    writers: dict[str, ShardWriter] = {}
    n_threads = max(1, threads or cpu_count())
    bar = tqdm(
        total=plan.total_bytes, unit="B", unit_scale=True, desc=f"tokenizing {source}",
        disable=not show_progress, file=sys.stderr, smoothing=0.1,
    )
    pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="psyduck-encode")
    pending: deque[tuple[Future, int]] = deque()  # tasks in flight, in order, with their text bytes

    def drain(keep: int) -> None:
        """Write finished tasks in order until at most `keep` remain in flight."""
        while len(pending) > keep:
            future, nbytes = pending.popleft()
            for split, ids in future.result():
                writers[split].write(ids)
            bar.update(nbytes)

    try:
        batch: list[tuple[str, str, bool]] = []
        batch_chars = batch_bytes = 0
        for doc in plan.documents():
            split = doc.split
            assert split is not None
            if split not in writers:
                writers[split] = ShardWriter(out, split, dtype, shard_tokens)
            writer = writers[split]
            nbytes = len(doc.text.encode("utf-8"))
            writer.documents += 1
            writer.bytes += nbytes
            if doc.words is not None:
                writer.words = (writer.words or 0) + doc.words
            batch_bytes += nbytes
            for piece, last in _pieces(doc.text):
                batch.append((split, piece, last))
                batch_chars += len(piece)
                if batch_chars >= BATCH_BYTES:
                    pending.append((pool.submit(_encode, tok, batch, dtype), batch_bytes))
                    batch, batch_chars, batch_bytes = [], 0, 0
                    drain(keep=2 * n_threads)  # enough queued to keep every core busy, no more
        if batch:
            pending.append((pool.submit(_encode, tok, batch, dtype), batch_bytes))
        drain(keep=0)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar.total is not None and not bar.disable and bar.n != bar.total:
            bar.total = bar.n  # the total was an estimate (WikiText's file sizes); end the bar at 100%
        bar.close()
        for writer in writers.values():
            writer.close()

    for split in ("train", "val"):
        if split not in writers:
            where = path if path is not None else source
            _clear(out)
            raise PsyDuckError(f"{where} has no {split} text; a corpus needs both a train and a val split")
    meta = {
        "format": FORMAT,
        "source": source,
        "path": path,
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype_name(dtype),
        "splits": {s: writers[s].summary() for s in SPLITS if s in writers},
        "val_fraction": None if plan.own_splits else val_fraction,
        "seed": None if plan.own_splits else seed,
    }
    if any(w.words is not None for w in writers.values()):
        meta["word_count"] = WORD_COUNT
    _write_json_atomic(out / "meta.json", meta)
    return out
