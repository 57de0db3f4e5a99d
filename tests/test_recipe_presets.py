"""The presets sized for one GPU that train on the named recipes: tinystories-gpu and fineweb-edu-gpu."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, corpus_text

from psyduck.cli import default_out
from psyduck.cli import main as cli_main
from psyduck.config import Config, get_preset, presets
from psyduck.data.recipes import RECIPES
from psyduck.hardware import model_footprint

# preset -> (parameters, tokens per optimizer step, the README row's parameter column)
DOCUMENTED = {
    "tinystories-gpu": (27_402_752, 131_072, "27.4M"),  # llama2.c's 42M shape with a 4,096-token vocabulary
    "fineweb-edu-gpu": (124_439_808, 524_288, "124.4M"),  # GPT-2 small with GPT-2's 50,257 tokens
}


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_the_preset_builds_the_documented_model(name: str) -> None:
    cfg = get_preset(name)
    params, tokens_per_step, column = DOCUMENTED[name]
    assert model_footprint(cfg.model)[0] == params
    assert cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size == tokens_per_step
    assert cfg.train.compile and cfg.train.dtype == "auto"  # compiled, bf16 autocast where CUDA has it
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # as a run's config.json reads back
    rows = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1 and f"| {column} |" in rows[0] and f"| {cfg.data.tokenizer} |" in rows[0]


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_the_preset_reads_what_its_recipe_prepares_by_default(name: str) -> None:
    data = presets[name].data
    assert data.source in RECIPES
    assert data.path == default_out(data.source, None, data.tokenizer)  # `psyduck prepare SOURCE --tokenizer T`
    assert presets[name].model.vocab_size == {"bpe-4096": 4096, "gpt2": 50_257}[data.tokenizer]


@pytest.mark.parametrize(("name", "command"), [
    ("tinystories-gpu", "psyduck prepare tinystories --tokenizer bpe-4096 --out data/tinystories"),
    ("fineweb-edu-gpu", "psyduck prepare fineweb-edu --tokenizer gpt2 --out data/fineweb-edu-gpt2"),
])
def test_training_without_the_data_names_the_prepare_command(name, command, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "--preset", name, "--out", "runs/x"]) == 2
    err = capsys.readouterr().err
    folder = command.rsplit(" ", 1)[-1]
    assert err == f"psyduck: error: data folder not found: {folder}; run `{command}` first\n"
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_tinystories_gpu_trains_on_what_the_recipe_prepared(tmp_path, monkeypatch, capsys) -> None:
    """`prepare tinystories` (a local copy in the hub's layout) then `train --preset tinystories-gpu`
    from the same folder: it finds the data and speaks its tokenizer (shrunk to a CPU-sized step)."""
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    datasets = pytest.importorskip("datasets")
    docs = corpus_text(300).split("<|endoftext|>")
    copy = tmp_path / "TinyStories" / "data"
    copy.mkdir(parents=True)
    for split, texts in (("train", docs[:270]), ("validation", docs[270:])):
        pq.write_table(pa.Table.from_pylist([{"text": t} for t in texts]), copy / f"{split}-00000-of-00001.parquet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # not the user's cache
    assert cli_main(["prepare", "tinystories", "--path", str(copy.parent), "--tokenizer", "bpe-4096"]) == 0
    assert json.loads(Path("data/tinystories/meta.json").read_text())["vocab_size"] == 4096
    capsys.readouterr()
    small = ["max_iters=1", "batch_size=2", "grad_accum=1", "model.n_layer=1", "block_size=64", "train.compile=false",
             "eval_iters=1", "sample_tokens=0", "device=cpu"]
    assert cli_main(["train", "--preset", "tinystories-gpu", "--out", "runs/ts", "--no-progress", *small]) == 0
    run = json.loads(Path("runs/ts/config.json").read_text())
    assert run["data"] == {"path": "data/tinystories", "source": "tinystories", "tokenizer": "bpe-4096"}
    assert (run["model"]["d_model"], run["model"]["activation"], run["model"]["vocab_size"]) == (512, "swiglu", 4096)
