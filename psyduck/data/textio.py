"""Bytes -> text, carefully: compressed files, encodings, and files that are not text at all.

Every local reader in the data pipeline goes through here, so each bad-input case has one answer:

- Compression by extension: ``.gz`` (gzip, standard library) and ``.zst`` (Zstandard, the
  `zstandard` package, which most dumps use). A file whose compressed stream stops early (an
  interrupted download) is refused, never read as a shorter corpus: gzip checks its end marker,
  and for Zstandard we check that the last frame was complete (its stream reader does not).
- Encodings: text is UTF-8 unless ``--encoding`` says otherwise. Bytes that are not valid in the
  encoding become U+FFFD (one per bad sequence), and the reader warns once per file with the count,
  naming the fix (a Latin-1 file is the usual cause: pass ``--encoding latin-1``).
- Not text: a file whose first block is more than NOT_TEXT control characters or BAD_TEXT
  undecodable bytes (an image, a binary, random bytes) is refused instead of "prepared".
"""

from __future__ import annotations

import codecs
import gzip
import io
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from psyduck.errors import PsyDuckError

COMPRESSIONS = (".gz", ".zst")
READ_BYTES = 8 << 20  # bytes per read
ZSTD_READ = 1 << 13  # compressed bytes per Zstandard step (text inflates ~4x; bounds each step's output)
SNIFF_CHARS = 1 << 16  # the first characters looked at to decide "text or not"
NOT_TEXT = 0.05  # more than this share of control characters: not a text file
BAD_TEXT = 0.30  # or more than this share of undecodable bytes
_TEXT_CONTROLS = frozenset("\t\n\r\f\v")


def warn(message: str) -> None:
    """One warning line on stderr that does not break a progress bar."""
    tqdm.write(f"psyduck: warning: {message}", file=sys.stderr)


def check_encoding(encoding: str | None) -> str:
    """The codec name to decode with (UTF-8 by default); PsyDuckError for one Python does not know."""
    if encoding is None:
        return "utf-8"
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise PsyDuckError(f"unknown encoding '{encoding}'; try --encoding utf-8 or --encoding latin-1") from None


class _ZstdReader(io.RawIOBase):
    """A Zstandard file read as one stream (every frame), refusing one that stops mid-frame.

    Compressed bytes go in ZSTD_READ at a time, so what one read decompresses to stays small.
    """

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._raw, self._zstd = raw, zstandard
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._buffer, self._pos = b"", 0
        self._fed = False  # the current frame has received input

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while self._pos == len(self._buffer):
            chunk = self._raw.read(ZSTD_READ)
            if not chunk:
                if self._fed and not self._dobj.eof:
                    raise EOFError("the last Zstandard frame is incomplete")
                return 0
            out = []
            while chunk:
                if self._dobj.eof:  # the next frame starts
                    self._dobj, self._fed = self._zstd.ZstdDecompressor().decompressobj(), False
                out.append(self._dobj.decompress(chunk))
                self._fed = True
                chunk = self._dobj.unused_data if self._dobj.eof else b""
            self._buffer, self._pos = b"".join(out), 0
        n = min(len(target), len(self._buffer) - self._pos)
        target[:n] = self._buffer[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when its name ends in .gz or .zst."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if suffix == ".zst":
        try:
            import zstandard  # noqa: F401 (only: is it installed?)
        except ImportError:
            raise PsyDuckError(f"reading {path} needs the zstandard package; pip install zstandard") from None
        return io.BufferedReader(_ZstdReader(open(path, "rb")))  # type: ignore[return-value]
    return open(path, "rb")


def damaged(path: Path, error: Exception) -> PsyDuckError:
    """The one-line error for a compressed file that cannot be read to its end."""
    return PsyDuckError(f"{path} is truncated or damaged ({error}); download or compress it again")


# what decompressors raise on a truncated or corrupt stream
READ_ERRORS: tuple[type[Exception], ...] = (EOFError, zlib.error, gzip.BadGzipFile)


def read_errors() -> tuple[type[Exception], ...]:
    """READ_ERRORS plus zstandard's own error type when the package is installed."""
    try:
        import zstandard
    except ImportError:
        return READ_ERRORS
    return (*READ_ERRORS, zstandard.ZstdError)


class Decoder:
    """Decodes one file's bytes block by block, counting the bytes that were not valid text.

    Bad sequences become U+FFFD; `finish` warns once with their count. A sequence cut between two
    blocks is decoded whole (an incremental decoder keeps the unfinished bytes). With `newlines`,
    line ends are translated to "\n".
    """

    def __init__(self, path: Path, encoding: str, newlines: bool = False) -> None:
        self.path, self.encoding = path, encoding
        self._decoder: codecs.IncrementalDecoder | io.IncrementalNewlineDecoder
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        if newlines:  # "\r\n" and "\r" become "\n", as in Python's text mode
            self._decoder = io.IncrementalNewlineDecoder(self._decoder, translate=True)
        self.bad = 0  # replacement characters we introduced
        self._sniffed = False

    def decode(self, data: bytes, final: bool = False) -> str:
        text = self._decoder.decode(data, final)
        replaced = text.count("\ufffd")
        if replaced and self.encoding == "utf-8":  # U+FFFD written in the file (3 bytes) is not an error
            replaced -= data.count(b"\xef\xbf\xbd")
        self.bad += max(0, replaced)
        if not self._sniffed and text:
            self._sniffed = True
            refuse_binary(self.path, text[:SNIFF_CHARS])
        return text

    def finish(self) -> None:
        """Warn about the bytes that did not decode (at most once per file)."""
        if self.bad:
            fix = "pass --encoding latin-1 (or the file's encoding)" if self.encoding == "utf-8" else "check --encoding"
            warn(f"{self.path}: {self.bad:,} byte sequences are not valid {self.encoding}, read as U+FFFD; {fix}")


def refuse_binary(path: Path, sample: str) -> None:
    """PsyDuckError when `sample` (a file's first characters) is mostly not text.

    Control characters are the sign of binary data (text has tabs and line ends only); undecodable
    bytes alone are not (a Latin-1 file read as UTF-8 has many), unless they are most of the sample.
    """
    controls = sum(1 for c in sample if (c < " " or "\x7f" <= c <= "\x9f") and c not in _TEXT_CONTROLS)
    bad = sample.count("\ufffd")
    if controls > NOT_TEXT * len(sample) or bad > BAD_TEXT * len(sample):
        raise PsyDuckError(
            f"{path} is mostly not text ({100 * (controls + bad) / len(sample):.0f}% of its first {len(sample):,} "
            "characters are control bytes or not decodable); remove it or point --path at text files"
        )


def text_blocks(path: Path, encoding: str, newlines: bool = False) -> Iterator[str]:
    """A file's text, a few MB at a time, decompressed and decoded (see the module docstring)."""
    decoder = Decoder(path, encoding, newlines)
    try:
        with open_binary(path) as f:
            while block := f.read(READ_BYTES):
                if text := decoder.decode(block):
                    yield text
            if text := decoder.decode(b"", final=True):
                yield text
    except read_errors() as e:
        raise damaged(path, e) from None
    decoder.finish()


def binary_lines(path: Path) -> Iterator[bytes]:
    """A file's lines as bytes (decompressed), with truncation reported as `damaged`."""
    try:
        with open_binary(path) as f:
            yield from f
    except read_errors() as e:
        raise damaged(path, e) from None
