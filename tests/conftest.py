"""Shared fixtures: a small English corpus, prepared once per test session, and a tiny config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Nothing in the suite may reach the Hub: set before any test imports huggingface_hub or datasets,
# which read these once (a test that talks to a local stand-in Hub sets HF_HUB_OFFLINE=0 itself).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The test models are tiny: one thread per process is as fast as two, and far faster when the two
# cores are shared (OpenMP threads spin-waiting on a busy core). Child processes inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def corpus_text(n_docs: int = 400) -> str:
    """The first `n_docs` articles of the embedded corpus, separated by end-of-text markers."""
    from psyduck.data.sources import wiki_vital

    docs = []
    for i, doc in enumerate(wiki_vital()):
        if i >= n_docs:
            break
        docs.append(doc)
    return "<|endoftext|>".join(docs)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "wiki400.txt"
    p.write_text(corpus_text(), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, corpus_file) -> Path:
    """~200 KB of Wikipedia text tokenized with a 512-token BPE."""
    from psyduck.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare("text", "bpe-512", out, path=str(corpus_file), show_progress=False)
    return out


@pytest.fixture()
def tiny_cfg(tiny_data):
    """The `tiny` preset pointed at `tiny_data`, with no dropout (runs are then deterministic)."""
    from psyduck.config import get_preset

    return get_preset("tiny").replace(
        {"data.path": str(tiny_data), "max_iters": 20, "eval_interval": 10, "eval_iters": 2, "sample_tokens": 8}
    )


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m psyduck ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "psyduck", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
