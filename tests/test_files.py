"""Local files as a corpus: every format and compression gives the same documents; bad input is one line."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import tracemalloc
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow", reason="parquet and csv need pyarrow (pip install 'psyduck[files]')")
zstandard = pytest.importorskip("zstandard", reason=".zst files need zstandard (pip install 'psyduck[files]')")
import pyarrow.parquet as pq

from psyduck.cli import main as cli_main
from psyduck.data.files import read_files
from psyduck.data.loader import TokenData
from psyduck.data.prepare import prepare
from psyduck.errors import PsyDuckError

RECORDS = [
    {"id": i, "body": f"Story {i}: the duck café swam {'far ' * (i % 5)}across the 東京 pond.\nThe end.", "title": f"t{i}"}
    for i in range(40)
]
TEXTS = [r["body"] for r in RECORDS]


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gz":
        return gzip.compress(data)
    if kind == "zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


def write(path: Path, data: bytes, kind: str = "") -> Path:
    path = path.with_name(path.name + (f".{kind}" if kind else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compress(data, kind))
    return path


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def csv_bytes(records: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().encode("utf-8")


def parquet_file(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=7)
    return path


def docs(path: Path, field: str = "body", **kwargs) -> list[str]:
    return [d.strip() for d in read_files(str(path), field, **kwargs) if d.strip()]


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(PsyDuckError) as e:
        fn(*args, **kwargs)
    return str(e.value)


@pytest.mark.parametrize("kind", ["", "gz", "zst"])
def test_every_format_and_compression_gives_the_same_documents(tmp_path: Path, kind: str) -> None:
    files = {
        "jsonl": write(tmp_path / "a.jsonl", jsonl_bytes(RECORDS), kind),
        "json array": write(tmp_path / "b.json", json.dumps(RECORDS).encode(), kind),
        "json lines": write(tmp_path / "c.json", jsonl_bytes(RECORDS), kind),
        "csv": write(tmp_path / "d.csv", csv_bytes(RECORDS), kind),
        "txt": write(tmp_path / "e.txt", "\n<|endoftext|>\n".join(TEXTS).encode(), kind),
    }
    for name, file in files.items():
        assert docs(file) == TEXTS, name
    if not kind:
        assert docs(parquet_file(tmp_path / "f.parquet", RECORDS)) == TEXTS


def test_a_folder_reads_every_supported_file_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "b" / "part.jsonl", jsonl_bytes(RECORDS[20:]), "zst")
    write(tmp_path / "a.csv", csv_bytes(RECORDS[:20]), "gz")
    (tmp_path / "notes.bin").write_bytes(os.urandom(100))  # other types are skipped
    write(tmp_path / ".hidden" / "x.jsonl", jsonl_bytes(RECORDS))  # so are hidden folders
    assert docs(tmp_path) == TEXTS


def test_text_files_keep_their_line_ends_and_separators_across_blocks(tmp_path: Path, monkeypatch) -> None:
    import psyduck.data.textio as textio

    monkeypatch.setattr(textio, "READ_BYTES", 5)  # separators and characters straddle reads
    text = "first story\r\nline two\n<|endoftext|>\nsecond é 東京\n<|endoftext|>third"
    assert docs(write(tmp_path / "s.txt", text.encode())) == ["first story\nline two", "second é 東京", "third"]


def test_missing_and_non_string_text_fields(tmp_path: Path) -> None:
    file = write(tmp_path / "a.jsonl", jsonl_bytes(RECORDS))
    assert error(docs, file, "text") == (
        f"line 1 of {file} has no field 'text'; its text fields: body, title; pass --text-field NAME"
    )
    assert error(docs, file, "id") == (
        f"field 'id' of line 1 of {file} is a int, not text; its text fields: body, title; pass --text-field NAME"
    )
    table = parquet_file(tmp_path / "a.parquet", RECORDS)
    assert error(docs, table, "text") == f"{table} has no column 'text'; its text columns: body, title; pass --text-field NAME"
    assert error(docs, table, "id") == (
        f"column 'id' of {table} holds int64, not text; its text columns: body, title; pass --text-field NAME"
    )
    sheet = write(tmp_path / "a.csv", csv_bytes(RECORDS))
    assert error(docs, sheet, "id") == (
        f"column 'id' of {sheet} holds int64, not text; its text columns: body, title; pass --text-field NAME"
    )


def test_bad_json_and_unknown_extension(tmp_path: Path) -> None:
    file = write(tmp_path / "a.jsonl", b'{"body": "ok"}\n{"body": broken\n')
    assert error(docs, file).startswith(f"line 2 of {file} is not JSON (")
    other = write(tmp_path / "a.xml", b"<a/>")
    assert error(read_files, str(other)) == (
        f"cannot tell the format of {other} from its name; supported: *.txt, *.md, *.jsonl, *.json, *.parquet, "
        "*.csv (also .gz, .zst but not parquet)"
    )


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_truncated_compressed_file(tmp_path: Path, kind: str) -> None:
    whole = compress(jsonl_bytes(RECORDS * 50), kind)
    file = tmp_path / f"a.jsonl.{kind}"
    file.write_bytes(whole[: len(whole) * 2 // 3])
    message = error(docs, file)
    assert message.startswith(f"{file} is truncated or damaged (") and message.endswith("); download or compress it again")


def test_latin1_is_warned_with_a_count_or_read_with_encoding(tmp_path: Path, capsys) -> None:
    file = write(tmp_path / "old.txt", "Un café à Paris, déjà vu.".encode("latin-1"))
    assert docs(file) == ["Un caf\ufffd \ufffd Paris, d\ufffdj\ufffd vu."]
    assert capsys.readouterr().err == (
        f"psyduck: warning: {file}: 4 byte sequences are not valid utf-8, read as U+FFFD; "
        "pass --encoding latin-1 (or the file's encoding)\n"
    )
    assert docs(file, encoding="latin-1") == ["Un café à Paris, déjà vu."]
    assert capsys.readouterr().err == ""
    assert error(docs, file, encoding="klingon") == "unknown encoding 'klingon'; try --encoding utf-8 or --encoding latin-1"


def test_csv_in_another_encoding(tmp_path: Path) -> None:
    sheet = write(tmp_path / "old.csv", "text,n\ncafé crème,1\n\"à la\nligne\",2\n".encode("latin-1"))
    assert docs(sheet, "text", encoding="latin-1") == ["café crème", "à la\nligne"]
    assert error(docs, sheet, "text") == (
        f"column 'text' of {sheet} is not valid UTF-8; pass --encoding (e.g. --encoding latin-1)"
    )


def test_random_binary_is_refused(tmp_path: Path) -> None:
    file = write(tmp_path / "data.txt", os.urandom(20_000))
    message = error(docs, file)
    assert message.startswith(f"{file} is mostly not text (") and message.endswith(
        "are control bytes or not decodable); remove it or point --path at text files"
    )


def test_empty_file_is_an_empty_corpus(tmp_path: Path) -> None:
    file = write(tmp_path / "a.jsonl", b"\n\n")
    assert error(prepare, "files", "cl100k_base", tmp_path / "out", path=str(file), show_progress=False) == (
        f"corpus is empty: {file} holds no text; point --path at a file or folder with text"
    )


def test_reading_is_streamed_not_held_whole(tmp_path: Path) -> None:
    """A 24 MB jsonl.zst is read with a few MB of Python memory, not the corpus' size."""
    rng = random.Random(0)
    words = [w.lower() for w in " ".join(TEXTS).split()] + [f"w{i}" for i in range(5000)]
    big = [{"body": " ".join(rng.choices(words, k=150))} for _ in range(24_000)]
    file = write(tmp_path / "big.jsonl", jsonl_bytes(big), "zst")
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_files(str(file), "body"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == len(big)
    assert peak < 8e6, f"peak {peak / 1e6:.1f} MB"


def test_prepare_files_from_the_command_line(tmp_path: Path, capsys) -> None:
    write(tmp_path / "corpus" / "a.jsonl", jsonl_bytes(RECORDS), "zst")
    out = tmp_path / "data"
    assert cli_main(["prepare", "files", "--path", str(tmp_path / "corpus"), "--text-field", "body",
                     "--tokenizer", "cl100k_base", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "files" and meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 40
    capsys.readouterr()
    assert cli_main(["prepare", "files", "--path", str(tmp_path / "corpus"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.endswith("its text fields: body, title; pass --text-field NAME\n")


def test_text_source_refuses_binary_and_reads_latin1_with_encoding(tmp_path: Path, capsys) -> None:
    noise = write(tmp_path / "noise.dat", os.urandom(20_000))
    assert error(prepare, "text", "cl100k_base", tmp_path / "out", path=str(noise), show_progress=False).startswith(
        f"{noise} is mostly not text ("
    )
    old = write(tmp_path / "old.txt", ("Un café à Paris. " * 50).encode("latin-1"))
    out = tmp_path / "latin"
    assert cli_main(["prepare", "text", "--path", str(old), "--encoding", "latin-1", "--tokenizer", "cl100k_base",
                     "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    data = TokenData(out)
    text = data.tokenizer().decode(data.tokens("train").tolist())
    assert "café à Paris" in text and "\ufffd" not in text
