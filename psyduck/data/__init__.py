"""The data pipeline: text -> token shards -> batches. Import from the module you need:

- `document`: `Document`, one unit of text (an article, a story, a file) and what its source knows.
- `sources`: where text comes from (`read_documents("wiki-vital")`, your own files via "text",
  WikiText via `wikitext`, the sales textbook via `download`).
- `shards`: the on-disk format (meta.json's version, the token dtype, the shard writer).
- `prepare`: tokenize a source once into train/val(/test) shards plus meta.json (`prepare(...)`).
- `loader`: memory-map those shards and cut them into training and evaluation batches (`TokenData`).

Nothing is imported here, so `psyduck prepare` never pays for (or needs) PyTorch: only the loader
imports it.
"""
