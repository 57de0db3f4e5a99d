"""A document: one unit of text that belongs together (an article, a story, a file).

Documents matter twice downstream: the train/val split is made per document (so no article is half
in each), and in the token shards every document ends with the end-of-text token, which teaches the
model where one text stops and the next, unrelated one begins.

A source yields plain strings, or `Document`s when it knows more about a text (its own split, its
word count). `documents` turns either into clean `Document`s. This module imports nothing of the
package, so every source can use it without importing another source.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple


class Document(NamedTuple):
    """One document, with what its source knows about it beyond the text."""

    text: str
    split: str | None = None  # the source's own split ("train", "val", "test"); None: prepare picks
    words: int | None = None  # WikiText word count of the lines it came from (see wikitext.py)


def documents(raw: Iterable[str | Document]) -> Iterator[Document]:
    """Every non-blank document of what a source yielded, stripped of surrounding whitespace."""
    for item in raw:
        doc = Document(item) if isinstance(item, str) else item
        text = doc.text.strip()
        if text:
            yield doc._replace(text=text) if len(text) != len(doc.text) else doc
