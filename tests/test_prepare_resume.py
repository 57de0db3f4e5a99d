"""A prepare that is killed continues where it stopped; --out is never half replaced nor a run overwritten."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import psyduck.data.encode as encode
import psyduck.data.prepare as prepare_module
from psyduck.cli import main as cli_main
from psyduck.data.loader import TokenData
from psyduck.data.prepare import prepare
from psyduck.data.sources import SourceOptions
from psyduck.data.split import Plan
from psyduck.data.staging import PROGRESS, partial_dir
from psyduck.errors import PsyDuckError
from psyduck.tokenizer import Tokenizer, make_tokenizer

SMALL = {"BATCH_BYTES": 2_000, "COMMIT_BYTES": 6_000}  # many batches and progress records on a small corpus


def corpus(root: Path, n: int = 300) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i:03d}.txt").write_text(f"Document {i}. " + " ".join(f"word{(i * j) % 97}" for j in range(60)))
    return root


def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "BATCH_BYTES", SMALL["BATCH_BYTES"])
    monkeypatch.setattr(prepare_module, "COMMIT_BYTES", SMALL["COMMIT_BYTES"])


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


class Killed(Exception):
    pass


def dying(tok: Tokenizer, after: int) -> Tokenizer:
    """The same tokenizer, but its encode raises after `after` batches (a kill mid-prepare)."""
    calls = []

    class Dying(type(tok)):
        def encode_to_arrays(self, texts):
            calls.append(1)
            if len(calls) > after:
                raise Killed
            return super().encode_to_arrays(texts)

    return Dying(tok.name, tok.vocab_size, tok.eot_id, encoding=tok._encoding)


def test_resume_after_a_crash_gives_the_same_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_batches(monkeypatch)
    src = str(corpus(tmp_path / "c"))
    tok = make_tokenizer("cl100k_base")
    whole = prepare("text", tok, tmp_path / "whole", path=src, show_progress=False, shard_tokens=3_000, threads=2)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        prepare("text", dying(tok, 9), out, path=src, show_progress=False, shard_tokens=3_000, threads=2)
    progress = json.loads((partial_dir(out) / PROGRESS).read_text())
    assert progress["documents"] > 0 and not out.exists()
    last = partial_dir(out) / progress["splits"]["train"]["shards"][-1]
    with open(last, "ab") as f:  # a half-written tail after the last record
        f.write(b"\x07" * 101)
    prepare("text", tok, out, path=src, show_progress=False, shard_tokens=3_000, threads=1)
    assert files(out) == files(whole) and not partial_dir(out).exists()
    assert len(TokenData(out).meta["splits"]["train"]["shards"]) > 3


def test_resume_after_sigkill(tmp_path: Path) -> None:
    """A real kill -9 at a random moment while prepare runs, then the same command again."""
    src = str(corpus(tmp_path / "c", n=1500))
    out = tmp_path / "out"
    script = (
        "import sys, psyduck.data.encode as e, psyduck.data.prepare as p\n"
        f"e.BATCH_BYTES, p.COMMIT_BYTES = {SMALL['BATCH_BYTES']}, {SMALL['COMMIT_BYTES']}\n"
        f"p.prepare('text', 'bpe-400', {str(out)!r}, path={src!r}, show_progress=False, shard_tokens=5000, threads=1)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        progress = partial_dir(out) / PROGRESS
        if progress.is_file() and json.loads(progress.read_text() or "{}").get("documents", 0) > 0:
            break
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (out / "meta.json").exists(), "the prepare finished before the kill: make the corpus bigger"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-c", script.replace(repr(str(out)), repr(str(whole)))], check=True, timeout=300)
    assert files(out) == files(whole)


def test_other_arguments_start_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    small_batches(monkeypatch)
    src = str(corpus(tmp_path / "c"))
    tok = make_tokenizer("cl100k_base")
    with pytest.raises(Killed):
        prepare("text", dying(tok, 5), tmp_path / "out", path=src, show_progress=False)
    prepare("text", tok, tmp_path / "out", path=src, seed=7, show_progress=True)
    assert "holds a prepare of other arguments or text; starting over" in capsys.readouterr().err
    assert files(tmp_path / "out") == files(prepare("text", tok, tmp_path / "b", path=src, seed=7, show_progress=False))


def test_a_changed_corpus_starts_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_batches(monkeypatch)
    root = corpus(tmp_path / "c")
    tok = make_tokenizer("cl100k_base")
    with pytest.raises(Killed):
        prepare("text", dying(tok, 5), tmp_path / "out", path=str(root), show_progress=False)
    (root / "doc999.txt").write_text("A new document, added after the crash.")
    out = prepare("text", tok, tmp_path / "out", path=str(root), show_progress=False)
    assert files(out) == files(prepare("text", tok, tmp_path / "fresh", path=str(root), show_progress=False))


def test_refuses_a_run_folder_or_foreign_files_without_force(tmp_path: Path, capsys) -> None:
    src = str(corpus(tmp_path / "c", n=20))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "tokenizer.json").write_text("the run's own")
    args = ["prepare", "text", "--path", src, "--tokenizer", "cl100k_base", "--out", str(run)]
    assert cli_main(args) == 2
    assert capsys.readouterr().err == (
        f"psyduck: error: --out {run} holds a training run (config.json); prepare into another folder, "
        "or pass --force to replace it\n"
    )
    assert (run / "tokenizer.json").read_text() == "the run's own"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert cli_main(["prepare", "text", "--path", src, "--tokenizer", "cl100k_base", "--out", str(mine)]) == 2
    assert capsys.readouterr().err == (
        f"psyduck: error: --out {mine} holds files prepare did not write (notes.txt); choose a new or empty folder, "
        "or pass --force to replace it\n"
    )
    assert cli_main([*args, "--force"]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["meta.json", "tokenizer.json", "train_000.bin", "val_000.bin"]


def test_a_swap_cut_between_its_renames_is_repaired(tmp_path: Path) -> None:
    src = str(corpus(tmp_path / "c", n=20))
    out = prepare("text", "cl100k_base", tmp_path / "out", path=src, show_progress=False)
    before = files(out)
    os.replace(out, out.parent / f".{out.name}.old")  # killed after the first rename
    prepare("text", "cl100k_base", out, path=src, show_progress=False)
    assert files(out) == before and not (out.parent / f".{out.name}.old").exists()


def test_killed_after_finishing_but_before_the_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = str(corpus(tmp_path / "c", n=20))
    with monkeypatch.context() as m:
        m.setattr(prepare_module, "swap_in", lambda partial, out: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            prepare("text", "cl100k_base", tmp_path / "out", path=src, show_progress=False)
    assert (partial_dir(tmp_path / "out") / "meta.json").is_file()
    out = prepare("text", "cl100k_base", tmp_path / "out", path=src, show_progress=False)
    assert files(out) == files(prepare("text", "cl100k_base", tmp_path / "b", path=src, show_progress=False))


def test_bpe_trains_on_a_bounded_sample_spread_over_the_corpus(tmp_path: Path) -> None:
    src = str(corpus(tmp_path / "c"))
    plan = Plan("text", src, SourceOptions(), 0.05, 1337)
    sample = list(plan.train_sample(3_000))
    train = [d.text for d in plan.documents() if d.split == "train"]
    assert 0.8 * 3_000 <= sum(map(len, sample)) < 3_000 + max(map(len, train))  # about the limit
    assert sample[0] == train[0] and sample[1] != train[1]  # every k-th document, not the first ones
    out = prepare("text", "bpe-300", tmp_path / "o", path=src, tokenizer_sample=3_000, show_progress=False)
    again = prepare("text", "bpe-300", tmp_path / "p", path=src, tokenizer_sample=3_000, show_progress=False)
    assert files(out) == files(again)
    assert (out / "tokenizer.json").read_text() != (
        prepare("text", "bpe-300", tmp_path / "q", path=src, show_progress=False) / "tokenizer.json"
    ).read_text()


def test_max_tokens_on_local_files_reads_only_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_batches(monkeypatch)
    src = str(corpus(tmp_path / "c"))
    outs = [prepare("text", "cl100k_base", tmp_path / f"o{t}", path=src, max_tokens=20_000, threads=t,
                    show_progress=False) for t in (1, 2)]
    assert files(outs[0]) == files(outs[1])
    splits = TokenData(outs[0]).meta["splits"]
    assert 20_000 <= splits["train"]["tokens"] < 20_000 + SMALL["BATCH_BYTES"] and splits["val"]["documents"] > 0
    assert splits["train"]["documents"] + splits["val"]["documents"] < 300


def test_progress_bar_shows_rate_and_eta(tmp_path: Path, capsys) -> None:
    prepare("text", "cl100k_base", tmp_path / "o", path=str(corpus(tmp_path / "c", n=20)), show_progress=True)
    err = capsys.readouterr().err
    assert "tokenizing text" in err and "B/s" in err and "<" in err  # tqdm's "elapsed<remaining"


def test_tokenizer_from_a_file_and_gpt2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = str(corpus(tmp_path / "c", n=40))
    first = prepare("text", "bpe-300", tmp_path / "a", path=src, show_progress=False)
    again = prepare("text", str(first / "tokenizer.json"), tmp_path / "b", path=src, show_progress=False)
    assert files(again) == files(first)
    data = TokenData(again)
    data.check_tokenizer(data.tokenizer())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))  # an empty cache
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # and no way out
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    import psyduck.tokenizer as tokenizer_module

    tokenizer_module._gpt2_encoding.cache_clear()
    with pytest.raises(PsyDuckError) as e:
        prepare("text", "gpt2", tmp_path / "g", path=src, show_progress=False)
    assert str(e.value).startswith("cannot load the gpt2 tokenizer: tiktoken downloads its vocabulary (r50k_base.tiktoken)")
    assert not (tmp_path / "g").exists()


def test_gpt2_tokenizer_when_its_vocabulary_is_cached(tmp_path: Path) -> None:
    try:
        tok = make_tokenizer("gpt2")
    except PsyDuckError:
        pytest.skip("r50k_base.tiktoken is not in tiktoken's cache and this machine is offline (no local copy to test with)")
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's ids
    out = prepare("text", tok, tmp_path / "g", path=str(corpus(tmp_path / "c", n=20)), show_progress=False)
    assert TokenData(out).meta["dtype"] == "uint16"
    assert np.asarray(TokenData(out).tokens("train")).max() < 50257
