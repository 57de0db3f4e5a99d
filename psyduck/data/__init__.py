"""The data pipeline: text -> token shards -> batches.

- `sources`: where text comes from (`iter_documents("wiki-vital")`, your own files via "text",
  WikiText via `wikitext`, the sales textbook via `download`).
- `prepare`: tokenize a source once into train/val(/test) shards plus meta.json (`prepare(...)`).
- `loader`: memory-map those shards and cut them into training and evaluation batches (`TokenData`).
"""

from psyduck.data.loader import TokenData
from psyduck.data.prepare import prepare
from psyduck.data.sources import SOURCES, Document, iter_documents, read_documents

__all__ = ["SOURCES", "Document", "TokenData", "iter_documents", "prepare", "read_documents"]
