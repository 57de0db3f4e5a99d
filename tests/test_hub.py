"""Hugging Face datasets by name, recipes and --max-tokens, all offline: local folders in the hub's layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets", reason="the hf source needs `datasets` (pip install 'psyduck[hf]')")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq

from psyduck.data.loader import TokenData
from psyduck.data.prepare import prepare
from psyduck.data.sources import SourceOptions
from psyduck.errors import PsyDuckError
from psyduck.tokenizer import Tokenizer, make_tokenizer

STORIES = [f"Once upon a time a duck number {i} found {'a pond ' * (1 + i % 4)}and was happy. The end." for i in range(60)]
VALID = [f"One day a small duck {i} saw the sea." for i in range(6)]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep `datasets`' arrow cache in the test's folder, not the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture(scope="module")
def cl100k() -> Tokenizer:
    return make_tokenizer("cl100k_base")


def hub_folder(root: Path, splits: dict[str, list[str]]) -> Path:
    """A dataset in the hub's parquet layout: data/<split>-00000-of-00001.parquet."""
    (root / "data").mkdir(parents=True)
    for split, texts in splits.items():
        table = pa.Table.from_pylist([{"text": t, "id": i} for i, t in enumerate(texts)],
                                     schema=pa.schema([("text", pa.string()), ("id", pa.int64())]))
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def hf(name: Path | str, tok: Tokenizer | str, out: Path, **options) -> Path:
    limits = {k: options.pop(k) for k in ("max_tokens", "threads") if k in options}
    return prepare("hf", tok, out, options=SourceOptions(name=str(name), **options), show_progress=False, **limits)


def decoded_docs(folder: Path, split: str) -> list[str]:
    data = TokenData(folder)
    return [d for d in data.tokenizer().decode(data.tokens(split).tolist()).split("<|endoftext|>") if d]


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(PsyDuckError) as e:
        fn(*args, **kwargs)
    return str(e.value)


def test_own_validation_split_is_kept_streamed_or_not(tmp_path: Path, cl100k: Tokenizer) -> None:
    folder = hub_folder(tmp_path / "ds", {"train": STORIES, "validation": VALID})
    stored = hf(folder, cl100k, tmp_path / "a")
    streamed = hf(folder, cl100k, tmp_path / "b", streaming=True)
    assert decoded_docs(stored, "val") == VALID and decoded_docs(stored, "train") == STORIES
    assert shard_bytes(stored) == shard_bytes(streamed)
    meta = json.loads((stored / "meta.json").read_text())
    assert (meta["val_fraction"], meta["splits"]["val"]["documents"]) == (None, len(VALID))


def test_without_a_held_out_split_the_split_is_per_document_and_deterministic(tmp_path: Path, cl100k: Tokenizer) -> None:
    folder = hub_folder(tmp_path / "ds", {"train": STORIES})
    for streaming in (False, True):
        one = hf(folder, cl100k, tmp_path / f"one-{streaming}", streaming=streaming)
        two = hf(folder, cl100k, tmp_path / f"two-{streaming}", streaming=streaming)
        assert shard_bytes(one) == shard_bytes(two)
        train, val = decoded_docs(one, "train"), decoded_docs(one, "val")
        assert val and sorted(train + val) == sorted(STORIES)


def test_split_map(tmp_path: Path, cl100k: Tokenizer) -> None:
    folder = hub_folder(tmp_path / "ds", {"train": STORIES, "validation": VALID, "test": VALID[:3]})
    out = hf(folder, cl100k, tmp_path / "a")
    assert decoded_docs(out, "test") == VALID[:3]
    out = hf(folder, cl100k, tmp_path / "b", split_map="train=train,test=val")
    assert decoded_docs(out, "val") == VALID[:3] and "test" not in TokenData(out).meta["splits"]
    assert error(hf, folder, cl100k, tmp_path / "c", split_map="train=train,validation=dev") == (
        "bad --split-map item 'validation=dev'; write HUB_SPLIT=train|val|test, comma-separated "
        "(e.g. train=train,validation=val)"
    )
    assert error(hf, folder, cl100k, tmp_path / "c", split_map="train=train,extra=val") == (
        f"dataset '{folder}' has no split extra (it has: train, validation, test); fix --split-map"
    )


def test_text_field_errors_and_empty_split(tmp_path: Path, cl100k: Tokenizer) -> None:
    folder = hub_folder(tmp_path / "ds", {"train": STORIES, "validation": VALID})
    assert error(hf, folder, cl100k, tmp_path / "a", text_field="story") == (
        f"split 'train' of {folder} has no column 'story'; its text columns: text; pass --text-field NAME"
    )
    assert error(hf, folder, cl100k, tmp_path / "a", text_field="id") == (
        f"column 'id' of split 'train' of {folder} holds Value('int64'), not text; its text columns: text; "
        "pass --text-field NAME"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in STORIES))
    (empty / "validation.jsonl").write_text("")
    assert error(hf, empty, cl100k, tmp_path / "b", streaming=True) == (
        f"split 'validation' of {empty} is empty; pick another with --split-map"
    )
    assert not (tmp_path / "b").exists()


def test_max_tokens_stops_train_deterministically(tmp_path: Path, cl100k: Tokenizer, monkeypatch) -> None:
    import psyduck.data.encode as encode

    monkeypatch.setattr(encode, "BATCH_BYTES", 300)  # many batches, so the stop falls mid-stream
    folder = hub_folder(tmp_path / "ds", {"train": STORIES * 5, "validation": VALID})
    outs = [hf(folder, cl100k, tmp_path / f"o{t}", max_tokens=2000, threads=t, streaming=True) for t in (1, 3)]
    assert shard_bytes(outs[0]) == shard_bytes(outs[1])
    meta = TokenData(outs[0]).meta["splits"]
    assert 2000 <= meta["train"]["tokens"] < 2000 + 300 and meta["val"]["documents"] == len(VALID)
    assert error(hf, folder, cl100k, tmp_path / "x", max_tokens=100) == (
        "--max-tokens 100 is smaller than one context window (1,025 tokens for a 1,024-token context); use at least 1025"
    )


def test_recipe_reads_a_local_copy(tmp_path: Path, cl100k: Tokenizer) -> None:
    folder = hub_folder(tmp_path / "TinyStories", {"train": STORIES, "validation": VALID})
    out = prepare("tinystories", cl100k, tmp_path / "ts", path=str(folder), show_progress=False)
    assert decoded_docs(out, "val") == VALID


def test_without_datasets_installed(tmp_path: Path, cl100k: Tokenizer, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    assert error(hf, "roneneldan/TinyStories", cl100k, tmp_path / "a") == (
        "the hf source needs the Hugging Face `datasets` package; pip install 'psyduck[hf]'"
    )


def test_offline_unknown_name_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "c")}
    done = subprocess.run(
        [sys.executable, "-m", "psyduck", "prepare", "hf", "nobody/nothing", "--tokenizer", "cl100k_base",
         "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("psyduck: error:")]
    assert len(lines) == 1 and lines[0].startswith("psyduck: error: cannot load 'nobody/nothing': the hub is unreachable")
    assert lines[0].endswith("connect once to download it, or set HF_HOME to a cache that holds it")


def test_prepare_hf_from_the_command_line(tmp_path: Path) -> None:
    from psyduck.cli import main as cli_main

    folder = hub_folder(tmp_path / "ds", {"train": STORIES * 5})
    out = tmp_path / "o"
    assert cli_main(["prepare", "hf", str(folder), "--streaming", "--max-tokens", "2K", "--tokenizer", "cl100k_base",
                     "--out", str(out)]) == 0
    meta = TokenData(out).meta
    assert meta["max_tokens"] == 2000 and meta["splits"]["train"]["tokens"] >= 2000
    assert meta["options"] == {"name": str(folder), "streaming": True}
