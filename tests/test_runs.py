"""Run folders and atomic files: the newest *loadable* checkpoint is the one everything uses.

The end-to-end test damages a run's newest checkpoint and checks that `generate`, `eval` and
`export` (real CLI processes) still work, from the previous checkpoint, saying which they skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from psyduck.config import ModelConfig
from psyduck.errors import PsyDuckError
from psyduck.io import atomic_path, keep_jsonl_rows, read_jsonl, write_json_atomic
from psyduck.model import GPT
from psyduck.runs import RunFolder, list_checkpoints

from conftest import run_cli


@pytest.fixture(scope="module")
def damaged_run(tmp_path_factory, tiny_data) -> Path:
    """A tiny run with checkpoints at steps 10 and 20, the newest one's weights cut short."""
    run = tmp_path_factory.mktemp("damaged") / "run"
    trained = run_cli("train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run), "--no-progress",
                      "--max-iters", "20", "--eval-interval", "10", "eval_iters=2", "sample_tokens=0")
    assert trained.returncode == 0, trained.stderr
    assert [c.name for c in list_checkpoints(run)] == ["step_0000010", "step_0000020"]
    weights = list_checkpoints(run)[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a disk that lost the end of the file
    return run


def skipped_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "skipped damaged checkpoint" in line]


@pytest.mark.parametrize("command", ["generate", "eval", "export"])
def test_commands_use_the_newest_loadable_checkpoint_and_name_the_skipped_one(command, damaged_run, tmp_path):
    newest, previous = list_checkpoints(damaged_run)[-1], list_checkpoints(damaged_run)[0]
    args = {
        "generate": ["generate", str(damaged_run), "--prompt", "The", "--max-new-tokens", "12", "--seed", "3", "--exact"],
        "eval": ["eval", str(damaged_run), "--json", "--max-batches", "2", "--device", "cpu"],
        "export": ["export", str(damaged_run), "--format", "hf"],
    }[command]
    out = ["--out", str(tmp_path / "a")] if command == "export" else []
    res = run_cli(*args, *out)
    assert res.returncode == 0, res.stderr
    lines = skipped_lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"psyduck: skipped damaged checkpoint {newest} (model.safetensors: ")
    assert lines[0].endswith("); using step_0000010")
    assert "Traceback" not in res.stderr

    # the same output as asking for the previous checkpoint by name, which skips nothing
    out = ["--out", str(tmp_path / "b")] if command == "export" else []
    named = run_cli(*args, *out, "--checkpoint", str(previous))
    assert named.returncode == 0, named.stderr
    assert skipped_lines(named.stderr) == []
    if command == "export":
        from safetensors.torch import load_file

        a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert res.stdout == named.stdout and res.stdout.strip()


def test_every_checkpoint_damaged_is_one_line(damaged_run, tmp_path, capsys):
    import shutil

    from psyduck.cli import main

    run = tmp_path / "run"
    shutil.copytree(damaged_run, run)
    for ckpt in list_checkpoints(run):
        (ckpt / "model.safetensors").write_bytes(b"\x00" * 10)
    assert main(["generate", str(run), "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"psyduck: error: every checkpoint of {run} is damaged (step_0000010, step_0000020); "
        "train the run again or restore a checkpoint from a backup"
    )
    assert [line.endswith("; no loadable checkpoint is left") for line in err[:-1]] == [True, True]


def small_model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=64, block_size=8, d_model=16, n_layer=1, n_head=2, dropout=0.0))


def test_best_and_pruning_keep_the_lowest_val_loss_and_survive_a_damaged_state(tmp_path):
    run = RunFolder(tmp_path / "run")
    model = small_model()
    for step, val in ((10, 2.0), (20, 1.0), (30, 3.0)):
        run.save_checkpoint(step, model, None, {"val_loss": val}, keep=5)
    (run.checkpoints()[-1] / "state.json").write_text("{torn")  # unreadable: not a candidate for best
    assert run.best().name == "step_0000020"
    assert run.latest_loadable().name == "step_0000020"
    run.save_checkpoint(40, model, None, {"val_loss": float("nan")}, keep=1)  # NaN is never "best"
    assert [c.name for c in run.checkpoints()] == ["step_0000020", "step_0000040"]  # the best is kept
    assert not [p for p in run.checkpoints_dir.iterdir() if p.name.startswith(".")]
    with pytest.raises(PsyDuckError, match="has no checkpoint yet"):
        RunFolder(tmp_path / "empty").pick()


def test_atomic_path_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "config.json"
    write_json_atomic(target, {"a": "é"})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary left behind


def test_read_jsonl_skips_torn_lines_and_keep_rows_rewrites(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == []
    path.write_bytes(b'{"step": 0}\n[1, 2]\n{"step": 10, "note": "\xff"}\n{"step": 20, "val')
    assert read_jsonl(path) == [{"step": 0}, {"step": 10, "note": "\ufffd"}]
    keep_jsonl_rows(path, lambda row: row["step"] <= 5)
    assert path.read_text() == '{"step": 0}\n'
