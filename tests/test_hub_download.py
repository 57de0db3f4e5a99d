"""`psyduck prepare hf NAME` and the recipes downloading from a stand-in Hugging Face Hub on 127.0.0.1.

The real CLI runs in a child process with HF_ENDPOINT pointing at tests/standin_hub.py and its HF
caches in the test's folder: `huggingface_hub` and `datasets` read those when they are imported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from standin_hub import DatasetRepos, hub_env, serve

pytest.importorskip("datasets", reason="the hf source needs `datasets` (pip install 'psyduck[hf]')")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from psyduck.data.loader import TokenData  # noqa: E402

STORIES = [f"Once upon a time a duck number {i} found {'a pond ' * (1 + i % 4)}and was happy. The end." for i in range(60)]
VALID = [f"One day a small duck {i} saw the sea." for i in range(6)]


def parquet(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{"text": t, "id": i} for i, t in enumerate(texts)]), path)


def decoded_docs(folder: Path, split: str) -> list[str]:
    data = TokenData(folder)
    return [d for d in data.tokenizer().decode(data.tokens(split).tolist()).split("<|endoftext|>") if d]


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def prepare_cli(tmp_path: Path, env: dict[str, str], *args: str):
    return run_cli("prepare", *args, "--tokenizer", "cl100k_base", env=env, cwd=tmp_path, timeout=120)


def test_prepare_hf_downloads_once_then_reads_the_cache_offline(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    parquet(repo / "data" / "train-00000-of-00001.parquet", STORIES)
    parquet(repo / "data" / "validation-00000-of-00001.parquet", VALID)
    with serve(DatasetRepos, {"user/stories": repo}) as (endpoint, requests):
        env = hub_env(tmp_path, endpoint)
        done = prepare_cli(tmp_path, env, "hf", "user/stories", "--out", "a")
        assert done.returncode == 0, done.stderr
        assert decoded_docs(tmp_path / "a", "train") == STORIES
        assert decoded_docs(tmp_path / "a", "val") == VALID  # the dataset's own split, not a seeded share
        meta = json.loads((tmp_path / "a" / "meta.json").read_text())
        assert meta["val_fraction"] is None and meta["options"] == {"name": "user/stories"}
        downloads = [q["path"] for q in requests if q["method"] == "GET" and "/resolve/" in q["path"]]
        assert sorted(p.rsplit("/", 1)[-1] for p in downloads) == [
            "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
        assert all("/datasets/user/stories" in q["path"] for q in requests)

        seen = len(requests)
        offline = {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        done = prepare_cli(tmp_path, offline, "hf", "user/stories", "--out", "b")
        assert done.returncode == 0, done.stderr
        assert len(requests) == seen  # read from the cache, nothing asked of the Hub
        assert shard_bytes(tmp_path / "b") == shard_bytes(tmp_path / "a")

    empty = {**hub_env(tmp_path / "empty", endpoint), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = prepare_cli(tmp_path, empty, "hf", "user/stories", "--out", "c")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("psyduck: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "psyduck: error: cannot load 'user/stories': the hub is unreachable (offline?) and the HF cache has no copy"
    ) and errors[0].endswith("connect once to download it, or set HF_HOME to a cache that holds it")
    assert not (tmp_path / "c").exists()


def test_fineweb_edu_recipe_streams_its_config_up_to_max_tokens(tmp_path: Path) -> None:
    """The recipe's own repo name and config (sample-10BT, declared in the card as the real one
    does), streamed; one split, so val is a held-out share of the documents read. (Where in a
    stream --max-tokens stops is tested with small batches in test_hub.py.)"""
    pages = [f"Page {i}: the water cycle moves water between {'the sea, the air and the land ' * (1 + i % 3)}." for i in range(300)]
    repo = tmp_path / "fineweb-edu"
    (repo / "sample" / "10BT").mkdir(parents=True)
    parquet(repo / "sample" / "10BT" / "000_00000.parquet", pages[:150])
    parquet(repo / "sample" / "10BT" / "001_00000.parquet", pages[150:])
    parquet(repo / "data" / "CC-MAIN-2024-10" / "train-00000-of-00001.parquet", ["not in the sample"] * 10)
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*/*\n"
        "- config_name: sample-10BT\n  data_files:\n  - split: train\n    path: sample/10BT/*\n---\n# FineWeb-Edu\n"
    )
    with serve(DatasetRepos, {"HuggingFaceFW/fineweb-edu": repo}) as (endpoint, requests):
        done = prepare_cli(tmp_path, hub_env(tmp_path, endpoint), "fineweb-edu", "--max-tokens", "2K", "--out", "fwe")
    assert done.returncode == 0, done.stderr
    meta = TokenData(tmp_path / "fwe").meta
    assert meta["max_tokens"] == 2000 and meta["splits"]["train"]["tokens"] >= 2000
    assert (meta["source"], meta["val_fraction"]) == ("fineweb-edu", 0.05)  # no own val split: a seeded share
    train, val = decoded_docs(tmp_path / "fwe", "train"), decoded_docs(tmp_path / "fwe", "val")
    assert val and train and set(train + val) <= set(pages) and not set(train) & set(val)
    assert not any("CC-MAIN" in q["path"] for q in requests if "/resolve/" in q["path"])  # the config's files only
