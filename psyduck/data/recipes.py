"""Named recipes: well-known corpora by one word, with the numbers people compare against.

    psyduck prepare tinystories --tokenizer bpe-8192 --out data/ts
    psyduck prepare fineweb-edu --tokenizer gpt2 --max-tokens 200M --out data/fwe

Each recipe is a Hugging Face dataset read through hub.py (``--path`` a local copy in the hub's
layout works too), so everything said there holds: the user's HF cache, one-line errors offline.

- ``tinystories``: roneneldan/TinyStories (Eldan & Li 2023, https://arxiv.org/abs/2305.07759),
  ~2.1M short stories written by GPT-3.5/4 in the vocabulary of a 3-year-old, with the dataset's own
  train / validation splits (~22k validation stories), one story per document (so stories are
  separated by end-of-text). Published numbers to compare with, llama2.c's val loss per token
  (https://github.com/karpathy/llama2.c, its 32,000-token Llama 2 vocabulary; the 260K model its
  own 512-token one): 260K params 1.297, 15M 1.072, 42M 0.847, 110M 0.760. Losses per token only
  compare under the same tokenizer: compare bits per byte (`psyduck eval`) otherwise.
- ``fineweb-edu``: HuggingFaceFW/fineweb-edu (Penedo et al. 2024, https://arxiv.org/abs/2406.17557),
  config sample-10BT (~10B GPT-2 tokens of educational web pages), streamed (no full download);
  take what you need with ``--max-tokens`` (e.g. 200M). It has one split: prepare holds out a
  seeded share of its documents for val. Published number: GPT-2-small-sized models (124M)
  trained on 10B tokens of FineWeb reach a val loss of about 3.28 with the gpt2 tokenizer
  (llm.c, https://github.com/karpathy/llm.c/discussions/481): prepare with ``--tokenizer gpt2``.
"""

from __future__ import annotations

from typing import NamedTuple


class Recipe(NamedTuple):
    """A Hugging Face dataset and how to read it."""

    hub_name: str
    config: str | None = None
    streaming: bool = False
    text_field: str = "text"


RECIPES = {
    "tinystories": Recipe("roneneldan/TinyStories"),
    "fineweb-edu": Recipe("HuggingFaceFW/fineweb-edu", config="sample-10BT", streaming=True),
}
