"""The token-shard format: what `prepare` writes and the loader reads, defined once.

    out/tokenizer.json    the tokenizer that made the ids
    out/train_000.bin     token ids, little-endian uint16 (vocab <= 65,536) or uint32, no header;
    out/train_001.bin     a new shard every SHARD_TOKENS tokens
    out/val_000.bin
    out/test_000.bin      only for sources with their own test split (WikiText)
    out/meta.json         what is in the shards (written last: its presence means "complete")

A shard is a plain integer array, so `numpy.fromfile` (or any language) reads it without PsyDuck.
meta.json says, per split, which shards hold it and how many tokens, UTF-8 bytes and documents
(and, for WikiText, words) it has; ``format`` is its version, which the loader checks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

FORMAT = 1  # meta.json format version: written by prepare, required by the loader
SHARD_TOKENS = 100_000_000  # tokens per shard file: 200 MB as uint16
SPLITS = ("train", "val", "test")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}  # meta.json's "dtype" -> numpy
WORD_COUNT = "WikiText words: str.split() tokens of each original line, plus 1 end-of-line per line"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest little-endian unsigned integer type that holds every id."""
    return DTYPES["uint16"] if vocab_size <= 2**16 else DTYPES["uint32"]


def dtype_name(dtype: np.dtype) -> str:
    """"uint16" or "uint32", as written in meta.json."""
    return f"uint{dtype.itemsize * 8}"


class ShardWriter:
    """Appends token ids to out/<split>_000.bin, _001.bin, ... starting a new file every `cap` tokens.

    It also keeps the split's counts for meta.json (`summary`): the caller adds `bytes`,
    `documents` and `words` as it reads the text; `tokens` counts what was written.
    """

    def __init__(self, out: Path, split: str, dtype: np.dtype, cap: int) -> None:
        self.out, self.split, self.dtype, self.cap = out, split, dtype, cap
        self.shards: list[str] = []
        self.tokens = self.bytes = self.documents = 0
        self.words: int | None = None  # summed only when documents carry word counts
        self._file: BinaryIO | None = None
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

    def flush(self) -> None:
        """Make what was written durable (before progress.json says it is done)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    @classmethod
    def restore(cls, out: Path, split: str, dtype: np.dtype, cap: int, state: dict) -> ShardWriter:
        """A writer continuing where `state` (an earlier `summary()`) left off.

        Shards before the last must be whole; the last is cut back to the recorded length (what a
        killed prepare wrote after its last record is dropped), and later shards are deleted.
        Raises ValueError when the files are shorter than the record (not resumable).
        """
        writer = cls(out, split, dtype, cap)
        writer.shards = list(state["shards"])
        writer.tokens, writer.bytes, writer.documents = int(state["tokens"]), int(state["bytes"]), int(state["documents"])
        writer.words = state.get("words")
        last = writer.tokens - cap * (len(writer.shards) - 1) if writer.shards else 0
        for i, name in enumerate(writer.shards):
            want = (cap if i < len(writer.shards) - 1 else last) * dtype.itemsize
            if (out / name).stat().st_size < want or (i < len(writer.shards) - 1 and (out / name).stat().st_size != want):
                raise ValueError(f"shard {name} is shorter than its record")
        for extra in set(p.name for p in out.glob(f"{split}_*.bin")) - set(writer.shards):
            (out / extra).unlink()
        if writer.shards:
            writer._file = open(out / writer.shards[-1], "r+b")
            writer._file.truncate(last * dtype.itemsize)
            writer._file.seek(0, os.SEEK_END)
            writer._room = cap - last
        return writer

    def summary(self) -> dict:
        """This split's entry in meta.json's "splits"."""
        info = {"shards": self.shards, "tokens": self.tokens, "bytes": self.bytes, "documents": self.documents}
        if self.words is not None:
            info["words"] = self.words
        return info
