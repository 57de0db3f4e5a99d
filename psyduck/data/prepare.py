"""Text -> token shards: run the tokenizer once, so training only ever reads integers.

Tokenizing is slow next to training's need for data (a training step wants thousands of tokens in
microseconds), so it happens once, ahead of time, and the result goes to disk as plain arrays that
the loader memory-maps. `prepare` writes one folder:

    out/tokenizer.json    the tokenizer (trained here for bpe-<N>, on the train split only)
    out/train_000.bin     token ids, little-endian uint16 (vocab <= 65,536) or uint32, no header;
    out/train_001.bin     a new shard every SHARD_TOKENS tokens
    out/val_000.bin
    out/meta.json         what is in the shards (written last: its presence means "complete")

Design choices:
- Every document's tokens are followed by the end-of-text id, so the model learns where texts end
  and the loader can tell documents apart.
- The train/val split is per document, from a seeded permutation: the same source, seed and
  fraction give byte-identical shards on every run. Validation gets round(n * val_fraction)
  documents, at least 1 and at most n - 1. A corpus of a single document is cut in two by characters
  instead (at the last paragraph break, else line break, else space, before the cut point).
- A BPE is trained on the train documents only, so validation text stays unseen (a fair val loss).
- Streaming: documents are encoded in batches (`encode_batch`, all cores) and appended to the shard
  files; only one batch of ids ever exists as Python ints.
- ``bytes`` in meta.json counts the UTF-8 bytes of each split's text: dividing a summed loss (in bits)
  by it gives bits per byte, a metric that compares models with different tokenizers.
- A killed prepare leaves no meta.json (old one removed first, new one written atomically last), so
  the loader refuses the half-written folder instead of training on it.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from psyduck.data.sources import iter_documents
from psyduck.errors import PsyDuckError
from psyduck.tokenizer import Tokenizer, bpe_vocab_size, make_tokenizer

FORMAT = 1  # meta.json format version
SHARD_TOKENS = 100_000_000  # tokens per shard file: 200 MB as uint16
BATCH_BYTES = 1 << 20  # encode about 1 MB of text per encode_batch call (all cores share it)
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest little-endian unsigned integer type that holds every id."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def dtype_name(dtype: np.dtype) -> str:
    """"uint16" or "uint32", as written in meta.json."""
    return f"uint{dtype.itemsize * 8}"


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


class _Split:
    """Which document goes where: a seeded permutation picks the validation documents."""

    def __init__(self, source: str, path: str | None, val_fraction: float, seed: int) -> None:
        self.source, self.path = source, path
        count, self.total_bytes, first = 0, 0, ""
        for doc in iter_documents(source, path):
            count, self.total_bytes = count + 1, self.total_bytes + len(doc.encode("utf-8"))
            first = first or doc
        if count == 0:
            where = path if path is not None else source
            raise PsyDuckError(f"corpus is empty: {where} holds no text; point --path at a file or folder with text")
        self.single: tuple[str, str] | None = None  # (train text, val text) for a lone document
        self.is_val = np.zeros(count, dtype=bool)
        if count == 1:
            if len(first) < 2:
                raise PsyDuckError(
                    "corpus is too small to split into train and val: it holds 1 character; use more text"
                )
            cut = _cut_point(first, val_fraction)
            self.single = (first[:cut].rstrip(), first[cut:].lstrip())
        else:
            n_val = min(count - 1, max(1, round(count * val_fraction)))
            self.is_val[np.random.default_rng(seed).permutation(count)[:n_val]] = True

    def documents(self) -> Iterator[tuple[str, str]]:
        """(split, text) for every document, in source order."""
        if self.single is not None:
            yield "train", self.single[0]
            yield "val", self.single[1]
            return
        for i, doc in enumerate(iter_documents(self.source, self.path)):
            yield ("val" if self.is_val[i] else "train"), doc

    def train_texts(self) -> Iterator[str]:
        return (doc for split, doc in self.documents() if split == "train")


class _ShardWriter:
    """Appends token ids to out/<split>_000.bin, _001.bin, ... starting a new file every `cap` tokens."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, cap: int) -> None:
        self.out, self.split, self.dtype, self.cap = out, split, dtype, cap
        self.shards: list[str] = []
        self.tokens = self.bytes = self.documents = 0
        self._file = None
        self._room = 0  # tokens the open shard can still take

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._room == 0:
                self._next_shard()
            chunk, ids = ids[: self._room], ids[self._room :]
            chunk.astype(self.dtype, copy=False).tofile(self._file)
            self._room -= len(chunk)
            self.tokens += len(chunk)

    def _next_shard(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self.shards.append(name)
        self._file = open(self.out / name, "wb")
        self._room = self.cap

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
    val_fraction: float = 0.05,
    seed: int = 1337,
    show_progress: bool = True,
    shard_tokens: int = SHARD_TOKENS,
) -> Path:
    """Tokenize a source into train/val shards in folder `out` (see the module docstring); returns `out`."""
    if not 0 < val_fraction < 1:
        raise PsyDuckError(f"val_fraction must be between 0 and 1, got {val_fraction}; try 0.05")
    if isinstance(tokenizer, str):
        bpe_vocab_size(tokenizer)  # reject an unknown spec before reading any text
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PsyDuckError(f"--out {out} is a file; choose a folder name")
    split = _Split(source, path, val_fraction, seed)

    if isinstance(tokenizer, str):
        if show_progress and bpe_vocab_size(tokenizer) is not None:
            tqdm.write(f"training {tokenizer} on the train split...", file=sys.stderr)
        tok = make_tokenizer(tokenizer, split.train_texts())
    else:
        tok = tokenizer
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    tok.save(out)

    dtype = token_dtype(tok.vocab_size)
    writers = {s: _ShardWriter(out, s, dtype, shard_tokens) for s in SPLITS}
    bar = tqdm(
        total=split.total_bytes, unit="B", unit_scale=True, desc=f"tokenizing {source}",
        disable=not show_progress, file=sys.stderr,
    )

    def flush(batch: list[tuple[str, str]]) -> None:
        encoded = tok.encode_batch([text for _, text in batch])
        for name, writer in writers.items():
            docs = [(ids, text) for (s, text), ids in zip(batch, encoded, strict=True) if s == name]
            if not docs:
                continue
            eot = (tok.eot_id,)
            flat = itertools.chain.from_iterable(itertools.chain(ids, eot) for ids, _ in docs)  # doc eot doc eot
            writer.write(np.fromiter(flat, dtype=np.int64))
            writer.documents += len(docs)
            writer.bytes += sum(len(text.encode("utf-8")) for _, text in docs)
        bar.update(sum(len(text.encode("utf-8")) for _, text in batch))

    try:
        batch: list[tuple[str, str]] = []
        batch_bytes = 0
        for item in split.documents():
            batch.append(item)
            batch_bytes += len(item[1])
            if batch_bytes >= BATCH_BYTES:
                flush(batch)
                batch, batch_bytes = [], 0
        if batch:
            flush(batch)
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()

    meta = {
        "format": FORMAT,
        "source": source,
        "path": path,
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype_name(dtype),
        "splits": {
            s: {"shards": w.shards, "tokens": w.tokens, "bytes": w.bytes, "documents": w.documents}
            for s, w in writers.items()
        },
        "val_fraction": val_fraction,
        "seed": seed,
    }
    _write_json_atomic(out / "meta.json", meta)
    return out
