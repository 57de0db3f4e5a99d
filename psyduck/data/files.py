"""Your own files as documents: text, JSON lines, JSON, Parquet and CSV, plain or compressed.

    psyduck prepare files --path my_corpus/ --text-field body     # every supported file below it
    psyduck prepare text --path notes/                             # only *.txt and *.md

The format comes from the file name: ``.txt``/``.md`` (text), ``.jsonl`` (one JSON object per line),
``.json`` (an array of objects, or JSON lines as the Hugging Face hub writes them), ``.parquet`` and
``.csv`` (a table with a header), each optionally ``.gz`` or ``.zst`` compressed (not Parquet, which
compresses inside). A folder is read recursively in sorted path order, skipping hidden entries and
files of other types, so the same folder always gives the same documents.

Documents:
- a text file is one document, unless it contains the separator ``<|endoftext|>``: then every piece
  between separators is one (the convention of many public dumps, e.g. TinyStories);
- a record (JSON object, table row) is one document: its ``--text-field`` (default ``text``).

Memory stays bounded whatever the corpus size: text is read a few MB at a time, JSON lines one line
at a time, tables one batch of rows at a time (a JSON *array* is the exception: the standard library
parses it whole, so use JSON lines for big corpora). Reading tables needs `pyarrow`.

Bad input is one line naming the problem and the fix: a record without the text field (listing the
fields that hold text), a field that is not text, a line that is not JSON, a truncated compressed
file, bytes that are not text (see textio.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from psyduck.data.textio import (
    COMPRESSIONS,
    Decoder,
    binary_lines,
    check_encoding,
    open_binary,
    text_blocks,
)
from psyduck.errors import PsyDuckError

SEPARATOR = "<|endoftext|>"  # splits one text file into several documents
FORMATS = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ALL_FORMATS = frozenset(FORMATS.values())
TABLE_ROWS = 8192  # rows per batch read from a table
_MISSING = object()


def file_format(path: Path) -> str | None:
    """"text", "jsonl", "json", "parquet" or "csv" from the file name (through .gz / .zst), else None."""
    name = path.name.lower()
    compressed = name.endswith(COMPRESSIONS)
    if compressed:
        name = name.rsplit(".", 1)[0]
    fmt = FORMATS.get(Path(name).suffix)
    return None if fmt == "parquet" and compressed else fmt


def supported(formats: frozenset[str]) -> str:
    return ", ".join(f"*{s}" for s, f in FORMATS.items() if f in formats) + " (also .gz, .zst but not parquet)"


def list_files(path: str | None, formats: frozenset[str], source: str) -> list[Path]:
    """The files a source reads at `path`: the file itself, or the matching files below a folder."""
    if path is None:
        raise PsyDuckError(f"the {source} source needs a file or folder; pass --path FILE_OR_FOLDER")
    root = Path(path).expanduser()
    if root.is_file():
        if source != "text" and file_format(root) not in formats:
            raise PsyDuckError(f"cannot tell the format of {root} from its name; supported: {supported(formats)}")
        return [root]
    if not root.is_dir():
        what = "text" if source == "text" else "files"
        raise PsyDuckError(f"{what} not found: {path}; pass --path an existing file or folder")
    return sorted(
        p for p in root.rglob("*")
        if file_format(p) in formats and p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def read_files(
    path: str | None, text_field: str = "text", encoding: str | None = None, *, source: str = "files",
    formats: frozenset[str] = ALL_FORMATS,
) -> Iterator[str]:
    """Every document of the files at `path` (see the module docstring); mistakes in `path` raise here."""
    codec = check_encoding(encoding)
    files = list_files(path, formats, source)
    return (doc for file in files for doc in file_documents(file, file_format(file) or "text", text_field, codec))


def file_documents(file: Path, fmt: str, text_field: str, encoding: str) -> Iterator[str]:
    """The documents of one file of a known format."""
    if fmt == "text":
        return text_documents(file, encoding)
    if fmt in ("parquet", "csv"):
        return table_texts(file, fmt, text_field, encoding)
    records = json_records(file, encoding) if fmt == "json" else jsonl_records(file, encoding)
    return (text for where, record in records if (text := record_text(record, text_field, where)) is not None)


def text_documents(file: Path, encoding: str) -> Iterator[str]:
    """A text file's documents: its pieces between separators, read block by block.

    Lines end in "\\n" whatever the file used ("\\r\\n", "\\r"), as Python's text mode reads them.
    """
    keep = len(SEPARATOR) - 1  # a separator may straddle two blocks: hold back its possible start
    parts: list[str] = []
    carry = ""
    for block in text_blocks(file, encoding, newlines=True):
        *done, last = (carry + block).split(SEPARATOR)
        for piece in done:
            parts.append(piece)
            yield "".join(parts)
            parts = []
        parts.append(last[:-keep] if len(last) > keep else "")
        carry = last[-keep:] if len(last) > keep else last
    parts.append(carry)
    yield "".join(parts)


def jsonl_records(file: Path, encoding: str) -> Iterator[tuple[str, Any]]:
    """(where, object) for every non-blank line of a JSON-lines file."""
    decoder = Decoder(file, encoding)
    for n, line in enumerate(binary_lines(file), 1):
        text = decoder.decode(line)
        if text.strip():
            where = f"line {n} of {file}"
            try:
                yield where, json.loads(text)
            except ValueError as e:
                raise PsyDuckError(f"{where} is not JSON ({e}); each line of a .jsonl file must be one JSON object") from None
    decoder.finish()


def json_records(file: Path, encoding: str) -> Iterator[tuple[str, Any]]:
    """A .json file's objects: the items of a top-level array, else one object per line (the hub's
    "json" files are JSON lines), else the file's single object."""
    with open_binary(file) as f:
        head = f.read(1 << 16).lstrip()
    if not head.startswith(b"["):
        lines = jsonl_records(file, encoding)
        try:
            first = next(lines, None)
        except PsyDuckError:
            if not head.startswith(b"{"):
                raise
        else:  # JSON lines (or an empty file)
            if first is not None:
                yield first
                yield from lines
            return
    decoder = Decoder(file, encoding)
    try:
        value = json.loads(decoder.decode(b"".join(binary_lines(file)), final=True))
    except ValueError as e:
        raise PsyDuckError(f"{file} is not JSON ({e}); pass a JSON array of objects or JSON lines") from None
    decoder.finish()
    for i, record in enumerate(value if isinstance(value, list) else [value]):
        yield f"item {i} of {file}", record


def record_text(record: Any, field: str, where: str) -> str | None:
    """The text field of one record (None for a null value, which is skipped)."""
    if not isinstance(record, dict):
        raise PsyDuckError(f"{where} is a JSON {type(record).__name__}, not an object with a '{field}' field")
    value = record.get(field, _MISSING)
    if isinstance(value, str) or value is None:
        return value
    fields = ", ".join(k for k, v in record.items() if isinstance(v, str)) or "none"
    if value is _MISSING:
        raise PsyDuckError(f"{where} has no field '{field}'; its text fields: {fields}; pass --text-field NAME")
    raise PsyDuckError(
        f"field '{field}' of {where} is a {type(value).__name__}, not text; its text fields: {fields}; "
        "pass --text-field NAME"
    )


def _arrow(file: Path) -> ModuleType:
    try:
        import pyarrow
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError:
        raise PsyDuckError(f"reading {file} needs pyarrow; pip install pyarrow") from None
    return pyarrow


def table_texts(file: Path, fmt: str, field: str, encoding: str) -> Iterator[str]:
    """The text column of a Parquet or CSV file, batch by batch (nulls skipped)."""
    pa = _arrow(file)
    try:
        yield from (text for batch in _table_batches(pa, file, fmt, field, encoding) for text in batch if text is not None)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, EOFError) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        fix = "pass --encoding if it is not UTF-8" if fmt == "csv" else "write or download it again"
        raise PsyDuckError(f"cannot read {file} ({detail}); {fix}") from None


def _table_batches(pa: ModuleType, file: Path, fmt: str, field: str, encoding: str) -> Iterable[list[Any]]:
    if fmt == "parquet":
        table = pa.parquet.ParquetFile(file)
        _check_column(pa, file, table.schema_arrow, field)
        return (b.column(0).to_pylist() for b in table.iter_batches(batch_size=TABLE_ROWS, columns=[field]))
    read = pa.csv.ReadOptions(encoding=encoding, block_size=8 << 20)
    parse = pa.csv.ParseOptions(newlines_in_values=True)
    with open_binary(file) as f:
        _check_column(pa, file, pa.csv.open_csv(f, read_options=read, parse_options=parse).schema, field)
    convert = pa.csv.ConvertOptions(include_columns=[field], column_types={field: pa.string()})
    return _csv_batches(pa, file, read, parse, convert)


def _csv_batches(pa: ModuleType, file: Path, read: Any, parse: Any, convert: Any) -> Iterator[list[Any]]:
    with open_binary(file) as f:
        for batch in pa.csv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert):
            yield batch.column(0).to_pylist()


def _check_column(pa: ModuleType, file: Path, schema: Any, field: str) -> None:
    """A clear error for a table without the text column, or with a column that is not text."""
    is_text = lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
    texts = ", ".join(f.name for f in schema if is_text(f.type)) or "none"
    if field not in schema.names:
        raise PsyDuckError(f"{file} has no column '{field}'; its text columns: {texts}; pass --text-field NAME")
    kind = schema.field(field).type
    if pa.types.is_binary(kind) and file_format(file) == "csv":  # pyarrow's type for text that is not UTF-8
        raise PsyDuckError(f"column '{field}' of {file} is not valid UTF-8; pass --encoding (e.g. --encoding latin-1)")
    if not (is_text(kind) or pa.types.is_null(kind)):  # an empty CSV column is typed null
        raise PsyDuckError(
            f"column '{field}' of {file} holds {kind}, not text; its text columns: {texts}; pass --text-field NAME"
        )
