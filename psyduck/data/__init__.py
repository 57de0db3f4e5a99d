"""The data pipeline: text -> token shards -> batches. Import from the module you need:

- `document`: `Document`, one unit of text (an article, a story, a file) and what its source knows.
- `sources`: where text comes from, by name (`read_documents("wiki-vital")`, `SOURCES`, `SourceOptions`):
    `files` (your text / JSON lines / JSON / Parquet / CSV files, read through `textio`: compression,
    encodings, binary refused), `hub` (a Hugging Face dataset by name), `recipes` (tinystories,
    fineweb-edu), `wikitext`, and the sales textbook (fetched by `download`).
- `split`: which document goes to train / val / test, and the BPE's training sample (`Plan`).
- `shards`: the on-disk format (meta.json's version, the token dtype, `ShardWriter`).
- `encode`: documents -> ids in the shards on every core (`Encoder`).
- `staging`: the partial folder a prepare works in, swapped in when complete; --out safety.
- `prepare`: the whole of it, resumable (`prepare(...)`).
- `loader`: memory-map the shards and cut them into training and evaluation batches (`TokenData`).

Nothing is imported here, so `psyduck prepare` never pays for (or needs) PyTorch: only the loader
imports it.
"""
