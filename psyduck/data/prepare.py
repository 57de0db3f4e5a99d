"""Text -> token shards: run the tokenizer once, so training only ever reads integers.

Tokenizing is slow next to training's need for data (a training step wants thousands of tokens in
microseconds), so it happens once, ahead of time, and the result goes to disk as plain arrays that
the loader memory-maps. `prepare` writes one folder in the format of shards.py: the tokenizer, the
split shards, and meta.json last.

Design choices:
- Splits are chosen per document (split.py); a BPE is trained on a bounded sample of the train
  documents (``tokenizer_sample`` characters, default TOKENIZER_SAMPLE: a few tens of seconds of
  training; smaller corpora are used whole), never on validation text.
- Encoding uses every core with bounded memory whatever the corpus size (encode.py).
- Safe and resumable: the work happens in a hidden partial folder that replaces ``out`` only when
  complete (staging.py). Every COMMIT_BYTES of text, between two documents, the shard files are
  fsynced and ``progress.json`` records the counts so far. A prepare killed at any moment and run
  again with the same arguments keeps what was recorded, cuts back whatever was written after it
  (a half-written shard is never taken as complete), skips the documents already done, and ends
  with the same shards as an uninterrupted run. Other arguments, or a changed corpus: it starts over.
- ``max_tokens`` stops the train split at about that many tokens (see encode.py); sources with their
  own val split still get all of it; others are split as a stream (split.py), so only the start of
  the corpus is ever read.
- Progress on stderr: a bar of text bytes (or, with max_tokens, train tokens) with MB/s and an ETA.
- ``bytes`` in meta.json counts the UTF-8 bytes of each split's text: dividing a summed loss (in bits)
  by it gives bits per byte, a metric that compares models with different tokenizers. ``words``
  (WikiText only) is the split's word count for word-level perplexity (see wikitext.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from psyduck.data.encode import Batch, Encoder, pieces
from psyduck.data.shards import (
    FORMAT,
    SHARD_TOKENS,
    SPLITS,
    WORD_COUNT,
    ShardWriter,
    dtype_name,
    token_dtype,
)
from psyduck.data.sources import SourceOptions
from psyduck.data.split import Plan
from psyduck.data.staging import (
    PROGRESS,
    check_out,
    partial_dir,
    read_progress,
    repair,
    swap_in,
)
from psyduck.errors import PsyDuckError
from psyduck.io import write_json_atomic
from psyduck.tokenizer import Tokenizer, bpe_vocab_size, load_tokenizer, make_tokenizer

COMMIT_BYTES = 32 << 20  # text between two progress records: the most a kill can cost
TOKENIZER_SAMPLE = 64_000_000  # characters a BPE trains on by default
MIN_TOKENS = 1025  # --max-tokens below one context window of 1024 (+1 target) cannot train anything


def cpu_count() -> int:
    """The cores this process may use (its CPU affinity where the OS tells, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _check_arguments(val_fraction: float, max_tokens: int | None, tokenizer_sample: int) -> None:
    if not 0 < val_fraction < 1:
        raise PsyDuckError(f"val_fraction must be between 0 and 1, got {val_fraction}; try 0.05")
    if max_tokens is not None and max_tokens < MIN_TOKENS:
        raise PsyDuckError(
            f"--max-tokens {max_tokens:,} is smaller than one context window ({MIN_TOKENS:,} tokens for a "
            f"1,024-token context); use at least {MIN_TOKENS}"
        )
    if tokenizer_sample < 1:
        raise PsyDuckError(f"--tokenizer-sample must be positive, got {tokenizer_sample}; try 64M")


def _resume_state(partial: Path, job: dict, count: int | None, show_progress: bool) -> dict | None:
    """The progress of an interrupted prepare of the same job on the same corpus in `partial`, else
    None (and an empty `partial`)."""
    progress = read_progress(partial)
    if progress is not None and progress.get("job") == job and progress.get("count") == count:
        if show_progress:
            tqdm.write(f"resuming an interrupted prepare in {partial}", file=sys.stderr)
        return progress
    if partial.exists():
        if progress is not None and show_progress:
            tqdm.write(f"{partial} holds a prepare of other arguments or text; starting over", file=sys.stderr)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return None


def _tokenizer(spec: str | Tokenizer, plan: Plan, partial: Path, resuming: bool, sample: int, show: bool) -> Tokenizer:
    """The tokenizer to encode with: given, reloaded (a resume), trained on a sample, or by name/path."""
    if isinstance(spec, Tokenizer):
        return spec
    if resuming:
        return load_tokenizer(partial)
    if bpe_vocab_size(spec) is None:
        return make_tokenizer(spec)
    if show:
        tqdm.write(f"training {spec} on up to {sample / 1e6:,.0f} MB of the train split...", file=sys.stderr)
    return make_tokenizer(spec, plan.train_sample(sample))


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
    max_tokens: int | None = None,
    tokenizer_sample: int = TOKENIZER_SAMPLE,
    force: bool = False,
) -> Path:
    """Tokenize a source into split shards in folder `out` (see the module docstring); returns `out`.

    `options` are what the source needs beyond its path (the text field of records, an encoding,
    a dataset name). `val_fraction` and `seed` choose the validation documents of sources without
    their own split. `threads` encoding threads (default: every core this process may use).
    `force` replaces an `out` that holds a run or foreign files.
    """
    _check_arguments(val_fraction, max_tokens, tokenizer_sample)
    if isinstance(tokenizer, str) and bpe_vocab_size(tokenizer) is None:
        make_tokenizer(tokenizer)  # a wrong name, a missing file or an offline download fails before any reading
    given, options = Path(out), options or SourceOptions()
    out = given.resolve()  # "--out ." or "x/" still names a folder with a parent to swap in
    check_out(given, force)
    repair(out)
    job = {
        "format": FORMAT, "source": source, "path": path, "options": dataclasses.asdict(options),
        "tokenizer": tokenizer if isinstance(tokenizer, str) else f"{tokenizer.name}:{tokenizer.fingerprint}",
        "val_fraction": val_fraction, "seed": seed, "shard_tokens": shard_tokens, "max_tokens": max_tokens,
        "tokenizer_sample": tokenizer_sample, "signature": _signature(path),
    }
    partial = partial_dir(out)
    earlier = read_progress(partial)  # the same files as last time: no need to count them again
    known = (earlier["count"], earlier.get("total_bytes")) if _same_files(earlier, job) else None
    # mistakes in source or path raise here; with max_tokens only the start of the corpus is read
    plan = Plan(source, path, options, val_fraction, seed, known, partial_read=max_tokens is not None)
    progress = _resume_state(partial, job, plan.count, show_progress)
    if progress is not None and progress.get("complete"):
        return _finish(partial, out, given)
    tok = _tokenizer(tokenizer, plan, partial, progress is not None, tokenizer_sample, show_progress)
    dtype = token_dtype(tok.vocab_size)
    progress, writers = _start(partial, job, plan, tok, progress, shard_tokens)
    encoder = Encoder(
        partial, tok, dtype, shard_tokens, max(1, threads or cpu_count()), writers,
        max_tokens, stop_all=not plan.own_splits, train_full=bool(progress.get("train_full")),
        commit_bytes=COMMIT_BYTES, checkpoint=functools.partial(_record, partial, progress),
    )
    try:
        _encode_all(plan, encoder, progress, source, show_progress)
    finally:
        encoder.close()
    _write_meta(partial, encoder, tok, plan, source, path, options, val_fraction, seed, max_tokens)
    write_json_atomic(partial / PROGRESS, {**progress, "complete": True})
    return _finish(partial, out, given)


def _start(
    partial: Path, job: dict, plan: Plan, tok: Tokenizer, progress: dict | None, shard_tokens: int
) -> tuple[dict, dict[str, ShardWriter]]:
    """The progress record and shard writers to continue from: restored from `progress`, or a
    fresh start (tokenizer saved, nothing done) when there is none or its files do not match it."""
    dtype = token_dtype(tok.vocab_size)
    writers = _restore_writers(partial, progress, dtype, shard_tokens) if progress is not None else None
    if progress is not None and writers is not None:
        return progress, writers
    shutil.rmtree(partial)
    tok.save(partial)
    progress = {"job": job, "count": plan.count, "total_bytes": plan.total_bytes, "documents": 0, "splits": {},
                "train_full": False}
    write_json_atomic(partial / PROGRESS, progress)
    return progress, {}


def _record(partial: Path, progress: dict, documents: int, splits: dict[str, dict], train_full: bool) -> None:
    """Write progress.json: `documents` are done and the shards hold exactly `splits`."""
    progress.update(documents=documents, splits=splits, train_full=train_full)
    write_json_atomic(partial / PROGRESS, progress)


def _same_files(earlier: dict | None, job: dict) -> bool:
    """Whether an earlier record is of this job over files that have not changed since."""
    return earlier is not None and earlier.get("job") == job and job["signature"] is not None and bool(earlier.get("count"))


def _signature(path: str | None) -> str | None:
    """A cheap hash of the files at `path` (names, sizes, modification times): a resume trusts the
    earlier count of documents only while it is unchanged. None without a local path."""
    if path is None or not Path(path).exists():
        return None
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(root) if f != root else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _restore_writers(partial: Path, progress: dict, dtype: np.dtype, cap: int) -> dict[str, ShardWriter] | None:
    """The writers of an interrupted prepare, cut back to its record; None when the files do not match it."""
    try:
        return {s: ShardWriter.restore(partial, s, dtype, cap, state) for s, state in progress["splits"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _encode_all(plan: Plan, encoder: Encoder, progress: dict, source: str, show: bool) -> None:
    """Feed every document not yet done to the encoder (which records progress as it writes)."""
    by_tokens = encoder.max_tokens is not None
    train = encoder.writers.get("train")
    bar = tqdm(
        total=encoder.max_tokens if by_tokens else plan.total_bytes, initial=(train.tokens if train else 0) if by_tokens
        else sum(w.bytes for w in encoder.writers.values()), unit="tok" if by_tokens else "B", unit_scale=True,
        desc=f"tokenizing {source}", disable=not show, file=sys.stderr, smoothing=0.1,
    )
    start, text_bytes = time.perf_counter(), 0

    def advance(nbytes: int) -> None:
        nonlocal text_bytes
        text_bytes += nbytes
        if by_tokens:
            train = encoder.writers.get("train")
            bar.update((train.tokens if train else 0) - bar.n)
            bar.set_postfix_str(f"{text_bytes / 1e6 / max(time.perf_counter() - start, 1e-9):.1f} MB/s", refresh=False)
        else:
            bar.update(nbytes)

    done = progress["documents"]
    batch = Batch()
    try:
        for i, doc in enumerate(itertools.islice(plan.documents(), done, None), done):
            if encoder.stopped:
                break
            if doc.split == "train" and encoder.train_full:
                continue
            for piece, last in pieces(doc.text):
                batch.add(doc, piece, last)
                if batch.full():
                    batch.ends_at = i + 1 if last else None
                    advance(encoder.submit(batch))
                    batch = Batch()
        if batch.items:
            encoder.submit(batch)
        advance(encoder.drain())
    finally:
        if bar.total is not None and not bar.disable and bar.n != bar.total:
            bar.total = bar.n  # the total was an estimate (file sizes, a dataset card); end the bar at 100%
        bar.close()


def _write_meta(partial: Path, encoder: Encoder, tok: Tokenizer, plan: Plan, source: str, path: str | None,
                options: SourceOptions, val_fraction: float, seed: int, max_tokens: int | None) -> None:
    """meta.json (see shards.py), after checking that train and val both have text."""
    writers = encoder.writers
    for split in ("train", "val"):
        if split not in writers or writers[split].tokens == 0:
            shutil.rmtree(partial, ignore_errors=True)
            where = path if path is not None else (options.name or source)
            raise PsyDuckError(f"{where} has no {split} text; a corpus needs both a train and a val split")
    encoder.commit()
    meta = {
        "format": FORMAT,
        "source": source,
        "path": path,
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype_name(token_dtype(tok.vocab_size)),
        "splits": {s: writers[s].summary() for s in SPLITS if s in writers},
        "val_fraction": None if plan.own_splits else val_fraction,
        "seed": None if plan.own_splits else seed,
    }
    if options != SourceOptions():
        meta["options"] = {k: v for k, v in dataclasses.asdict(options).items() if v != getattr(SourceOptions(), k)}
    if max_tokens is not None:
        meta["max_tokens"] = max_tokens
    if any(w.words is not None for w in writers.values()):
        meta["word_count"] = WORD_COUNT
    write_json_atomic(partial / "meta.json", meta)


def _finish(partial: Path, out: Path, given: Path) -> Path:
    """Swap the complete partial folder in as `out` and drop its progress record; returns `out` as given."""
    swap_in(partial, out)
    (out / PROGRESS).unlink(missing_ok=True)
    return given
