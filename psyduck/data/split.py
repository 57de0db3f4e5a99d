"""Which document goes to which split (train / val / test), decided the same way on every run.

- A source with its own split (WikiText, a Hugging Face dataset with a validation split) keeps it.
- Otherwise the split is per document, from a seeded permutation: the same source, seed and
  fraction give the same split on every run. Validation gets round(n * val_fraction) documents,
  at least 1 and at most n - 1. Counting n means reading the source once before tokenizing.
- A streamed source cannot be read twice (n is unknown until the end), so each document draws its
  split from a seeded generator keyed by its position: about val_fraction of the documents, the
  same ones on every run and after a resume. So does a source prepare reads only the start of
  (``--max-tokens``): counting all of a corpus to take a part of it would be wasted reading.
- A corpus of a single document is cut in two by characters instead (at the last paragraph break,
  else line break, else space, before the cut point).

`Plan` also picks the bounded sample a BPE tokenizer is trained on (train documents only, so
validation text stays unseen and the val loss fair).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np

from psyduck.data.document import Document, documents
from psyduck.data.shards import SPLITS
from psyduck.data.sources import SourceOptions, open_source
from psyduck.errors import PsyDuckError

DRAW_BLOCK = 1 << 16  # documents per block of split draws in a stream


def cut_point(text: str, fraction: float) -> int:
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


class StreamSplit:
    """val or train for document i of a stream of unknown length: seeded draws, DRAW_BLOCK at a time."""

    def __init__(self, seed: int, fraction: float) -> None:
        self.seed, self.fraction = seed, fraction
        self._block, self._val = -1, np.zeros(0, dtype=bool)

    def is_val(self, i: int) -> bool:
        block = i // DRAW_BLOCK
        if block != self._block:  # any block can be drawn on its own: a resume starts mid-stream
            self._block = block
            self._val = np.random.default_rng([self.seed, block]).random(DRAW_BLOCK) < self.fraction
        return bool(self._val[i % DRAW_BLOCK])


class Plan:
    """A source opened for prepare: its documents with their splits, and how much text there is.

    `count` is the number of documents (None when not counted: own splits, or a stream);
    `total_bytes` the UTF-8 bytes of text, or an estimate, or None.
    """

    def __init__(
        self, source: str, path: str | None, options: SourceOptions, val_fraction: float, seed: int,
        known: tuple[int, int | None] | None = None, partial_read: bool = False,
    ) -> None:
        """`known` (count, total_bytes) from an earlier pass over the same, unchanged corpus skips counting;
        `partial_read` (prepare will stop early: --max-tokens) splits as for a stream, never reading all of it."""
        self.source, self.path, self.options = source, path, options
        raw = open_source(source, path, options)  # mistakes in source or path raise here
        docs = documents(raw)
        first = next(docs, None)
        if first is None:
            where = path if path is not None else (options.name or source)
            raise PsyDuckError(f"corpus is empty: {where} holds no text; point --path at a file or folder with text")
        self.own_splits = first.split is not None
        self.streaming = bool(getattr(raw, "streaming", False)) or partial_read
        self.single: tuple[str, str] | None = None  # (train text, val text) for a lone document
        self.is_val = np.zeros(0, dtype=bool)
        self.stream_split = StreamSplit(seed, val_fraction) if self.streaming and not self.own_splits else None
        self.count: int | None = None
        self._open: Iterator[Document] | None = None
        if self.own_splits or self.stream_split is not None:  # read straight away: no counting pass
            self.total_bytes: int | None = getattr(raw, "size_hint", None)
            self._open = itertools.chain([first], docs)
            return
        if known is not None:
            count, self.total_bytes = known
        else:
            count, self.total_bytes = 1, len(first.text.encode("utf-8"))
            for doc in docs:
                count, self.total_bytes = count + 1, self.total_bytes + len(doc.text.encode("utf-8"))
        self.count = count
        if count == 1:
            if len(first.text) < 2:
                raise PsyDuckError("corpus is too small to split into train and val: it holds 1 character; use more text")
            cut = cut_point(first.text, val_fraction)
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
        elif self.stream_split is not None:
            for i, doc in enumerate(docs):
                yield doc._replace(split="val" if self.stream_split.is_val(i) else "train")
        else:
            for i, doc in enumerate(docs):
                yield doc._replace(split="val" if self.is_val[i] else "train")

    def train_sample(self, limit: int) -> Iterator[str]:
        """Train documents totalling about `limit` characters, spread over the whole train split
        where its size is known (every k-th document), else the first ones."""
        spread = self.total_bytes is not None and not self.streaming
        stride = max(1, math.ceil(self.total_bytes / limit)) if spread and self.total_bytes else 1
        taken = 0
        train = (doc.text for doc in self.documents() if doc.split == "train")
        for text in itertools.islice(train, 0, None, stride):
            yield text
            taken += len(text)
            if taken >= limit:
                return
