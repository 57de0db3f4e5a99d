"""WikiText: Wikipedia's Good and Featured articles, the classic word-level language-modeling benchmark.

Merity et al. 2016, "Pointer Sentinel Mixture Models", https://arxiv.org/abs/1609.07843. Four
variants, each with the dataset's own train / validation / test split (PsyDuck's train / val / test):

    source            Hugging Face config     files                    text
    wikitext-103      wikitext-103-raw-v1     wiki.{train,valid,test}.raw     the original characters
    wikitext-103-v1   wikitext-103-v1         wiki.{train,valid,test}.tokens  rare words -> <unk>
    wikitext-2        wikitext-2-raw-v1       (same layout, 2M words instead of 103M)
    wikitext-2-v1     wikitext-2-v1

WikiText-103's train split is 540 MB of text in 1,801,350 lines; validation 3,760 and test 4,358.

Where the text comes from:
- without ``--path``: Hugging Face `datasets` (``load_dataset("Salesforce/wikitext", config)``), which
  downloads once into the user's HF cache and reads from it afterwards, offline too. `datasets` is an
  optional dependency (``pip install 'psyduck[wikitext]'``), imported only here.
- ``--path`` an offline copy, recognised by its layout:
    * the original zip, e.g. ``wikitext-103-raw-v1.zip`` holding ``wikitext-103-raw/wiki.train.raw``...
      (read straight from the zip, nothing extracted), or a folder holding that zip;
    * its extracted folder (``wiki.train.raw`` in it or in a subfolder);
    * a folder of the hub's parquet files: ``train-00000-of-00002.parquet``, ``validation-...``,
      ``test-...``, directly or in a subfolder named after the config (reading them needs `pyarrow`).
  Every layout yields the same lines, so the same shards.

The format: one paragraph per line, each line starting with a space; blank lines between paragraphs;
headings ``= Title =`` (an article), ``= = Section = =``, ``= = = Subsection = = =``.

Documents: one per article. A new article starts at every top-level heading ``= Title =`` (exactly one
'=' on each side; ``= = Section = =`` stays inside its article). Each line is stripped of its
surrounding spaces and the lines are joined with "\\n", so paragraphs are separated by a blank line
and the text reads naturally; the article's text keeps every word of its lines. Lines before the first
heading (a blank one in the real files) belong to the first article.

Word counts, for word-level perplexity comparable with the papers: every document carries the
number of *words* of the lines it came from, counted as the WikiText papers and their tools
(Merity et al.; Transformer-XL; fairseq) do: the whitespace-separated tokens of each line
(Python's ``str.split()``) plus one end-of-line token per line, blank lines included. For the
WikiText-103 test split that gives 245,569, the count that fairseq's eval-lm reports and published
perplexities divide by. The raw variants are counted the same way on their raw text.
"""

from __future__ import annotations

import contextlib
import functools
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, ContextManager

from psyduck.data.document import Document
from psyduck.errors import PsyDuckError

CONFIGS = {  # PsyDuck source name -> Hugging Face config name (also the name of the original zip)
    "wikitext-103": "wikitext-103-raw-v1",
    "wikitext-103-v1": "wikitext-103-v1",
    "wikitext-2": "wikitext-2-raw-v1",
    "wikitext-2-v1": "wikitext-2-v1",
}
HUB_DATASET = "Salesforce/wikitext"
ZIP_URL = "https://wikitext.smerity.com/{config}.zip"  # the original zips (once on S3), still served here
FILE_SPLITS = {"train": "train", "valid": "val", "test": "test"}  # wiki.<name>.raw -> PsyDuck split
HUB_SPLITS = {"train": "train", "validation": "val", "test": "test"}  # hub split -> PsyDuck split
READ_BYTES = 8 << 20  # bytes per read from a text file

_TITLE = re.compile(r"= [^=](?:.*[^=])? =")  # "= Title =" but not "= = Section = ="

LineBatches = Callable[[], Iterator[list[str]]]  # each call reads the split again, lines in batches


def is_title(line: str) -> bool:
    """Whether a stripped line is a top-level heading "= Title =" (an article starts here)."""
    return line.startswith("= ") and _TITLE.fullmatch(line) is not None


def articles(split: str, batches: Iterator[list[str]]) -> Iterator[Document]:
    """Join lines (in batches, as read) into one Document per article, with its word count."""
    lines: list[str] = []
    has_text = False  # the pending lines hold more than blank ones

    def article() -> Document:
        text = "\n".join(lines).strip()
        # str.split() of the joined text sees exactly the tokens of the lines (stripping and
        # joining with "\n" removes only whitespace), then one end-of-line per line
        return Document(text, split, len(text.split()) + len(lines))

    for batch in batches:
        for raw in batch:
            line = raw.strip()
            if has_text and line.startswith("= ") and is_title(line):
                yield article()
                lines, has_text = [], False
            lines.append(line)
            has_text = has_text or bool(line)
    if lines:
        yield article()


class WikiText:
    """One copy of a WikiText variant: iterating yields its articles, split by split (train, val, test).

    Finding the copy happens here, so a wrong --path or a missing package fails before any work.
    `size_hint` is about how many bytes of text there are (for the progress bar), or None.
    """

    def __init__(self, source: str, path: str | None = None) -> None:
        self.source = source
        self.config = CONFIGS[source]
        self.ext = ".raw" if "-raw-" in self.config else ".tokens"
        self.zip_url = ZIP_URL.format(config=self.config)
        self.size_hint: int | None = None
        self.parts: list[tuple[str, LineBatches]] = self._locate(Path(path).expanduser()) if path else self._hub()

    def __iter__(self) -> Iterator[Document]:
        for split, batches in self.parts:
            yield from articles(split, batches())

    # -- offline copies -------------------------------------------------------------------------

    def _locate(self, path: Path) -> list[tuple[str, LineBatches]]:
        if path.is_file() and zipfile.is_zipfile(path):
            return self._zip(path)
        if path.is_dir():
            for folder in (path, *sorted(p for p in path.iterdir() if p.is_dir())):
                if (folder / f"wiki.train{self.ext}").is_file():
                    return self._files(folder)
            for folder in (path / self.config, path):
                if any(folder.glob("train-*.parquet")):
                    return self._parquet(folder)
            if (path / f"{self.config}.zip").is_file():
                return self._zip(path / f"{self.config}.zip")
            other = ".tokens" if self.ext == ".raw" else ".raw"
            if any(path.glob(f"wiki.train{other}")) or any(path.glob(f"*/wiki.train{other}")):
                raise self._variant_error(path, other)
        if not path.exists():
            raise PsyDuckError(f"WikiText copy not found: {path}; {self._layouts()}")
        raise PsyDuckError(f"no WikiText found at {path}; {self._layouts()}")

    def _layouts(self) -> str:
        return (
            f"pass --path {self.config}.zip (from {self.zip_url}), its extracted folder "
            f"(wiki.train{self.ext}, ...), or a folder of the hub's parquet files (train-*.parquet, ...)"
        )

    def _variant_error(self, path: Path, other: str) -> PsyDuckError:
        kind = "tokenized (<unk>)" if other == ".tokens" else "raw"
        fix = self.source.removesuffix("-v1") if self.source.endswith("-v1") else self.source + "-v1"
        return PsyDuckError(
            f"{path} holds the {kind} WikiText files (wiki.train{other}) but {self.source} reads "
            f"wiki.train{self.ext}; use `psyduck prepare {fix} --path {path}`"
        )

    def _zip(self, path: Path) -> list[tuple[str, LineBatches]]:
        with zipfile.ZipFile(path) as z:
            infos = [i for i in z.infolist() if not i.is_dir() and "__MACOSX" not in i.filename]
        members = {}
        for name, split in FILE_SPLITS.items():
            found = [i for i in infos if i.filename.rsplit("/", 1)[-1] == f"wiki.{name}{self.ext}"]
            if found:
                members[split] = found[0]
        if "train" not in members:
            other = ".tokens" if self.ext == ".raw" else ".raw"
            if any(i.filename.endswith(f"wiki.train{other}") for i in infos):
                raise self._variant_error(path, other)
            raise PsyDuckError(f"{path} is not a WikiText zip (no wiki.train{self.ext} inside); {self._layouts()}")
        self.size_hint = sum(i.file_size for i in members.values())

        return [
            (split, functools.partial(_text_lines, functools.partial(_open_member, path, m))) for split, m in members.items()
        ]

    def _files(self, folder: Path) -> list[tuple[str, LineBatches]]:
        files = {split: folder / f"wiki.{name}{self.ext}" for name, split in FILE_SPLITS.items()}
        files = {split: f for split, f in files.items() if f.is_file()}
        self.size_hint = sum(f.stat().st_size for f in files.values())
        return [(split, functools.partial(_text_lines, functools.partial(open, f, "rb"))) for split, f in files.items()]

    def _parquet(self, folder: Path) -> list[tuple[str, LineBatches]]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise PsyDuckError(
                f"reading the parquet files in {folder} needs pyarrow; pip install pyarrow "
                f"(or pass --path {self.config}.zip instead)"
            ) from None
        parts, size = [], 0
        for name, split in HUB_SPLITS.items():
            files = sorted(folder.glob(f"{name}-*.parquet"))
            if files:
                for f in files:
                    meta = pq.ParquetFile(f).metadata
                    size += sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
                parts.append((split, functools.partial(_parquet_lines, files)))
        self.size_hint = size
        return parts

    # -- Hugging Face datasets ------------------------------------------------------------------

    def _hub(self) -> list[tuple[str, LineBatches]]:
        by_hand = f"download {self.zip_url} and pass --path {self.config}.zip"
        try:
            import datasets
        except ImportError:
            raise PsyDuckError(
                f"{self.source} needs the Hugging Face `datasets` package (pip install 'psyduck[wikitext]') "
                f"or an offline copy: {by_hand}"
            ) from None
        try:
            ds = datasets.load_dataset(HUB_DATASET, self.config)
        except Exception as e:  # offline without a cache, hub errors: many types, one fix
            detail = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}" if str(e).strip() else type(e).__name__
            raise PsyDuckError(
                f"cannot load {HUB_DATASET} ({self.config}) from Hugging Face or its cache ({detail}); {by_hand}"
            ) from None
        parts = [(split, functools.partial(_dataset_lines, ds[name])) for name, split in HUB_SPLITS.items() if name in ds]
        try:
            self.size_hint = sum(int(ds[name].data.nbytes) for name in HUB_SPLITS if name in ds)
        except (AttributeError, TypeError, ValueError):
            self.size_hint = None
        return parts


@contextlib.contextmanager
def _open_member(path: Path, member: zipfile.ZipInfo) -> Iterator[BinaryIO]:
    """One file inside a zip, read without extracting it."""
    with zipfile.ZipFile(path) as z, z.open(member) as f:
        yield f  # type: ignore[misc]


def _text_lines(open_binary: Callable[[], ContextManager[BinaryIO]]) -> Iterator[list[str]]:
    """The lines of a UTF-8 text file in batches (without their newline), reading a few MB at a time.

    Lines end at "\n", "\r\n" or "\r" (Python's universal newlines, as the hub's conversion used),
    and nowhere else. Invalid UTF-8 becomes U+FFFD. (Reading bytes and cutting after the last "\n"
    of each read is faster than a TextIOWrapper, see docs/performance.md ("Preparing data"), and never splits a
    UTF-8 character.)
    """
    with open_binary() as f:
        rest = b""
        while block := f.read(READ_BYTES):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            block, rest = block[:cut], block[cut:]
            if block:
                yield _decode_lines(block)[:-1]  # the block ends with "\n": drop the empty last piece
        if rest:
            yield _decode_lines(rest)


def _decode_lines(data: bytes) -> list[str]:
    text = data.decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _parquet_lines(files: list[Path]) -> Iterator[list[str]]:
    """The `text` column of the hub's parquet files, one row per line, in batches."""
    import pyarrow.parquet as pq

    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=65_536, columns=["text"]):
            yield batch.column(0).to_pylist()


def _dataset_lines(split) -> Iterator[list[str]]:
    """The `text` column of a Hugging Face dataset split, one row per line, in batches."""
    for batch in split.iter(batch_size=65_536):
        yield batch["text"]
