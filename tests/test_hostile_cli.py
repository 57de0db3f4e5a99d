"""What a hostile afternoon of use found (issue 20, items 8-11 outside training): each case is one
clear line naming the problem and the fix, never a traceback, and JSON output is always JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from psyduck.cli import main
from psyduck.errors import PsyDuckError
from psyduck.io import read_jsonl
from psyduck.runs import list_checkpoints

from conftest import run_cli


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(out), "--no-progress",
                 "--max-iters", "10", "--eval-interval", "5", "eval_iters=1", "sample_tokens=0"]) == 0
    return out


def edited_copy(run: Path, dest: Path, edit) -> Path:
    """A copy of `run` whose checkpoints' weights went through `edit(tensors)`."""
    shutil.copytree(run, dest)
    for ckpt in list_checkpoints(dest):
        tensors = load_file(str(ckpt / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(ckpt / "model.safetensors"))
    return dest


def nan_weights(tensors: dict[str, torch.Tensor]) -> None:
    tensors["norm.weight"][:3] = float("nan")


def outcome(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, the one stderr line) of an in-process CLI call, never a traceback."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return code, out, lines[0]


def error_of(capsys, argv: list[str]) -> str:
    code, _, line = outcome(capsys, argv)
    assert code == 2 and line.startswith("psyduck: error: "), line
    return line[len("psyduck: error: "):]


def strict_json(text: str):
    """Parse as JSON proper: NaN and Infinity are not JSON."""
    def refuse(token: str):
        raise AssertionError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


# -- --config (item 9 non-UTF-8, item 11 a folder) ---------------------------------------------

def test_config_that_is_not_utf8(capsys, tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("[train]\nlr = 0.001  # r\u00e9glage\n".encode("latin-1"))
    assert error_of(capsys, ["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == (
        f"config file {bad} is not UTF-8 text (byte 0xe9 at offset 23); save it as UTF-8"
    )


def test_config_that_is_a_folder(capsys, tmp_path):
    assert error_of(capsys, ["train", "--config", str(tmp_path), "--out", str(tmp_path / "r")]) == (
        f"--config {tmp_path} is a folder; pass the path of a .toml file (e.g. {tmp_path / 'config.toml'})"
    )


# -- eval's limits (item 9) and JSON (item 10) -------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--batch-size", "-3", "--tasks", "hellaswag"], "--batch-size must be a positive integer, got -3"),
    (["--max-batches", "0"], "--max-batches must be a positive integer (leave it out for the whole split), got 0"),
    (["--max-batches", "-1", "--json"], "--max-batches must be a positive integer (leave it out for the whole split), got -1"),
])
def test_eval_refuses_empty_batches(capsys, run, flags, message):
    assert error_of(capsys, ["eval", str(run), *flags]) == message


def test_eval_of_outputs_that_overflow_is_null_in_json_and_a_failure(capsys, run, tmp_path):
    def overflow(tensors):  # finite weights, but the final norm's outputs overflow float32
        tensors["norm.weight"].fill_(1e38)
        tensors["norm.bias"].fill_(1e38)

    big = edited_copy(run, tmp_path / "big", overflow)
    code, out, line = outcome(capsys, ["eval", str(big), "--json", "--max-batches", "1"])
    res = strict_json(out)
    assert code == 2 and res["loss"] is None and res["perplexity"] is None and res["tokens"] > 0
    assert line == (
        f"psyduck: error: the val loss of run {big} is not finite: its outputs overflow although its weights "
        "are finite; pick an earlier checkpoint with --checkpoint"
    )


def test_json_safe_maps_every_non_finite_float_to_null():
    from psyduck.io import json_safe

    row = {"loss": float("nan"), "lrs": [1.0, float("inf")], "nested": {"x": -float("inf"), "n": 3}, "s": "nan"}
    assert json_safe(row) == {"loss": None, "lrs": [1.0, None], "nested": {"x": None, "n": 3}, "s": "nan"}


# -- NaN weights (items 9 and 10) --------------------------------------------------------------

def nan_message(run: Path) -> str:
    ckpt = list_checkpoints(run)[-1].name
    total = sum(t.numel() for t in load_file(str(list_checkpoints(run)[-1] / "model.safetensors")).values())
    return (
        f"the weights of run {run} ({ckpt}) are not finite (3 of {total:,} values are NaN or infinite, the first in "
        "norm.weight): training likely diverged; pick an earlier checkpoint with --checkpoint, or train again with a lower lr"
    )


def test_generate_and_eval_of_nan_weights_name_the_run(capsys, run, tmp_path):
    bad = edited_copy(run, tmp_path / "nan", nan_weights)
    assert error_of(capsys, ["generate", str(bad), "--prompt", "The", "--max-new-tokens", "3"]) == nan_message(bad)
    code, out, line = outcome(capsys, ["eval", str(bad), "--json"])
    assert code == 2 and out == "" and line == "psyduck: error: " + nan_message(bad)


def test_serve_refuses_nan_weights_at_start(run, tmp_path):
    from psyduck.runs import load_run
    from psyduck.serve.app import create_app

    bad = edited_copy(run, tmp_path / "nan", nan_weights)
    with pytest.raises(PsyDuckError) as e:
        create_app(bad)
    assert str(e.value) == nan_message(bad)
    model, tok = load_run(run)
    with torch.no_grad():
        model.norm.weight[0] = float("inf")
    with pytest.raises(PsyDuckError, match=r"^the weights of model m are not finite \(1 of [\d,]+ values are NaN or "
                       r"infinite, the first in norm.weight\); serve a model that trained well$"):
        create_app(model=model, tokenizer=tok, model_name="m")


def test_nan_weights_from_a_fresh_process_is_one_line(run, tmp_path):
    bad = edited_copy(run, tmp_path / "nan", nan_weights)
    res = run_cli("generate", str(bad), "--prompt", "The")
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr
    assert res.stderr.strip() == "psyduck: error: " + nan_message(bad)


# -- checkpoints and tokenizers (item 11) ------------------------------------------------------

def test_missing_checkpoint_is_not_found_and_lists_the_run_s(capsys, run):
    missing = run / "checkpoints" / "step_0000099"
    listing = f"{run} has step_0000005, step_0000010 (pass one of them, or 'best', to --checkpoint)"
    assert error_of(capsys, ["generate", str(run), "--checkpoint", str(missing)]) == f"checkpoint {missing} not found; {listing}"
    assert error_of(capsys, ["eval", str(run), "--checkpoint", "step_7"]) == f"checkpoint step_7 not found; {listing}"
    assert error_of(capsys, ["generate", str(run), "--checkpoint", str(run)]) == (
        f"checkpoint {run} is not a checkpoint folder; {listing}"
    )
    assert main(["eval", str(run), "--checkpoint", "step_0000005", "--max-batches", "1"]) == 0  # a bare name is found
    assert capsys.readouterr().out.startswith("val: loss ")


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_damaged_run_tokenizer_says_where_to_copy_it_from(capsys, run, tmp_path, damage):
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    data = json.loads((run / "config.json").read_text())["data"]["path"]
    if damage == "corrupt":
        (bad / "tokenizer.json").write_text("{garbage")
        problem = (f"tokenizer file {bad / 'tokenizer.json'} is corrupt (Expecting property name enclosed in double "
                   "quotes: line 1 column 2 (char 1))")
    else:
        (bad / "tokenizer.json").unlink()
        problem = f"tokenizer file not found: {bad / 'tokenizer.json'}"
    assert error_of(capsys, ["generate", str(bad)]) == (
        f"{problem}; the run folder is damaged: copy tokenizer.json from the data folder it was trained on "
        f"({data}, per its config.json) into {bad}"
    )


# -- metrics.jsonl that is not UTF-8 (item 9) --------------------------------------------------

def test_metrics_that_are_not_utf8_are_read(run, tmp_path):
    from fastapi.testclient import TestClient

    from psyduck.serve.app import create_app

    odd = tmp_path / "run"
    shutil.copytree(run, odd)
    with open(odd / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 11, "val_loss": NaN, "note": "\xe9\xff"}\n\xff\xfe\n')
    rows = read_jsonl(odd / "metrics.jsonl")
    assert rows[-1]["step"] == 11 and rows[-1]["note"] == "\ufffd\ufffd"
    got = TestClient(create_app(odd)).get(f"/api/runs/{odd.name}/metrics")
    assert got.status_code == 200 and got.json()["rows"][-1]["val_loss"] is None


# -- decode threads (item 8) -------------------------------------------------------------------

def test_decode_threads_default_to_one_for_small_models_on_cpus():
    from psyduck.cli import THREADS_HELP
    from psyduck.generate import decode_threads
    from psyduck.generate.threads import ONE_THREAD_MAX_PARAMS

    assert f"up to {ONE_THREAD_MAX_PARAMS // 10**6}M parameters" in THREADS_HELP
    assert decode_threads(11_500_000, "cpu", environ={}) == 1
    assert decode_threads(11_500_000, "cpu", requested=3, environ={}) == 3  # --threads wins
    assert decode_threads(11_500_000, "cpu", environ={"OMP_NUM_THREADS": "2"}) == torch.get_num_threads()
    assert decode_threads(10**9, "cpu", environ={}) == torch.get_num_threads()
    assert decode_threads(11_500_000, "cuda", environ={}) == torch.get_num_threads()


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_threads_must_be_positive(capsys, run, command):
    assert error_of(capsys, [command, str(run), "--threads", "0"]) == "--threads must be a positive integer, got 0"


def test_generate_sets_the_thread_count_it_is_given(capsys, run):
    before = torch.get_num_threads()
    try:
        assert main(["generate", str(run), "--prompt", "The", "--max-new-tokens", "4", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    out, err = capsys.readouterr()
    assert out.startswith("The") and err == ""
