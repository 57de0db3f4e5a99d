"""A hostile afternoon with `psyduck train` (issue 20): every case ends in one clear line or the right answer.

Two trainers on one folder, a `--resume` that would rewrite the run's recipe, every checkpoint
damaged, half precision on a CPU, impossible values and models, full disks and read-only folders,
signals, and resumes of folders that hold no run. Most cases run the CLI in this process
(`main`), so an exception that is not a one-line error fails the test with its traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from psyduck.cli import main
from psyduck.runs import RunFolder, is_loadable, list_checkpoints
from psyduck.train import Trainer

from conftest import metrics


def error_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI expecting a user error; return its one line (without the prefix)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("psyduck: error: ")
    return err[0][len("psyduck: error: "):]


def final_error_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI expecting a user error after training began: its last line, the only error, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if line.startswith("psyduck: error: ")] == lines[-1:], err
    return lines[-1][len("psyduck: error: "):]


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--no-progress",
            "max_iters=10", "eval_interval=5", "eval_iters=2", "sample_tokens=0", *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_data) -> Path:
    """A run trained to its max_iters (10), with lr=1e-3 (not the tiny preset's); copy it before changing it."""
    run = tmp_path_factory.mktemp("hostile") / "finished"
    assert main(train_args(tiny_data, run, "lr=1e-3")) == 0
    return run


@pytest.fixture()
def run_copy(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


# -- item 2: one run folder, one writer ---------------------------------------------------------

def test_a_second_trainer_on_a_run_folder_is_refused_naming_the_holder(capsys, tiny_data, tmp_path):
    out = tmp_path / "run"
    with RunFolder(out).lock():  # "another trainer": this process, through another open file
        msg = error_of(capsys, train_args(tiny_data, out))
    assert msg == f"{out} is in use by another trainer (PID {os.getpid()}); wait for it to finish or stop it, or choose another --out"
    assert not out.exists()  # released, and the folder the lock made is gone with it
    assert main(train_args(tiny_data, out)) == 0
    assert not (out / ".lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_cfg, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{dead.pid}\n")
    lines: list[str] = []
    Trainer(tiny_cfg.replace({"max_iters": 2, "sample_tokens": 0}), out, progress=False, log=lines.append).run()
    assert f"took over the lock of {out} left by PID {dead.pid}, which is no longer running" in lines
    assert list_checkpoints(out) and not (out / ".lock").exists()


# -- item 3: on --resume the saved config wins ---------------------------------------------------

def test_resume_with_a_conflicting_preset_is_refused(capsys, run_copy):
    before = (run_copy / "config.json").read_text()
    msg = error_of(capsys, ["train", "--out", str(run_copy), "--resume", "--preset", "tiny", "--no-progress"])
    assert msg.startswith(f"--preset tiny disagrees with the saved config of {run_copy} (train.max_iters: saved 10, preset 50; ")
    assert msg.endswith("); on --resume the saved config wins: drop --preset and give the changes you want as key=value")
    assert (run_copy / "config.json").read_text() == before


def test_resume_applies_flags_on_the_saved_config_and_lists_them(capsys, run_copy):
    assert main(["train", "--out", str(run_copy), "--resume", "--no-progress", "max_iters=15", "--eval-interval", "5"]) == 0
    err = capsys.readouterr().err
    assert "changes to the saved config: train.max_iters 10 -> 15\n" in err
    saved = json.loads((run_copy / "config.json").read_text())["train"]
    assert (saved["lr"], saved["max_iters"], saved["eval_iters"]) == (1e-3, 15, 2)  # the run's own lr, not the preset's


# -- item 4: every checkpoint damaged --------------------------------------------------------------

def test_resume_with_every_checkpoint_damaged_is_refused_then_started_over_on_request(capsys, run_copy):
    ckpts = list_checkpoints(run_copy)
    for c in ckpts:
        weights = c / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    names = ", ".join(c.name for c in ckpts)
    msg = error_of(capsys, ["train", "--out", str(run_copy), "--resume", "--no-progress"])
    assert msg == (f"every checkpoint of {run_copy} is damaged ({names}); restore one from a backup, "
                   "or pass --resume-from-scratch to move them aside and train anew")
    assert list_checkpoints(run_copy) == ckpts  # nothing deleted
    old_rows = metrics(run_copy)

    assert main(["train", "--out", str(run_copy), "--resume-from-scratch", "--no-progress"]) == 0
    err = capsys.readouterr().err
    aside = [p for p in run_copy.iterdir() if p.name.startswith("set-aside-")]
    assert len(aside) == 1 and f"aside into {aside[0]}; training anew from step 0" in err
    assert [c.name for c in list_checkpoints(aside[0])] == [c.name for c in ckpts]
    assert [json.loads(line) for line in (aside[0] / "metrics.jsonl").read_text().splitlines()] == old_rows
    assert [r["step"] for r in metrics(run_copy)] == [0, 5, 10]  # one history, the new one
    assert all(is_loadable(c) for c in list_checkpoints(run_copy))


def test_damaged_newer_checkpoints_are_moved_aside_not_overwritten(capsys, run_copy):
    newest = list_checkpoints(run_copy)[-1]
    (newest / "state.json").write_text("{not json")
    assert main(["train", "--out", str(run_copy), "--resume", "--no-progress"]) == 0
    err = capsys.readouterr().err
    aside = next(p for p in run_copy.iterdir() if p.name.startswith("set-aside-"))
    assert f"moved the damaged {newest.name} aside into {aside}" in err
    assert (aside / "checkpoints" / newest.name / "state.json").read_text() == "{not json"


# -- item 7: half precision on a CPU ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_peak_flops_are_measured_in_bounded_time_whatever_the_dtype(dtype):
    from psyduck.hardware import measured_peak_flops

    start = time.perf_counter()
    peak = measured_peak_flops(torch.device("cpu"), dtype)
    assert time.perf_counter() - start < 2.5  # a 2 s budget, and one matmul may end past it
    assert peak > 0


def test_slow_half_precision_is_said_up_front(monkeypatch, tiny_cfg, tmp_path):
    from psyduck import hardware

    rates = {torch.float16: 2e9, torch.float32: 80e9}  # as measured on a CPU that emulates float16
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda device, dtype=torch.float32, **kw: rates.get(dtype, 80e9))
    lines: list[str] = []
    Trainer(tiny_cfg.replace({"max_iters": 1, "dtype": "float16", "sample_tokens": 0}), tmp_path / "run", progress=False,
            log=lines.append).release()
    assert lines[0] == ("float16 is slow on this CPU: its matmuls run at 2.0 GFLOP/s against 80.0 for float32 "
                        "(40x slower); --dtype float32 trains faster here")
    assert hardware.half_precision_note(torch.device("cpu"), torch.float32) is None


# -- item 9: impossible values, models and folders --------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_learning_rate_that_is_not_a_number_is_refused(capsys, tiny_data, tmp_path, value):
    msg = error_of(capsys, train_args(tiny_data, tmp_path / "run", f"lr={value}"))
    assert msg == f"train.lr must be a finite number, got {float(value)}"


def test_a_model_too_large_for_the_machine_is_refused_before_allocating(capsys, tiny_data, tmp_path):
    msg = error_of(capsys, train_args(tiny_data, tmp_path / "run", "model.d_model=65536"))
    assert re.fullmatch(
        r"training a 103\.1B-parameter model \(d_model 65536, 2 layers, vocabulary 512\) with AdamW needs about "
        r"[\d.]+ TB, but cpu has [\d.]+ [KMGT]?B free; choose a smaller model \(model.d_model, model.n_layer, model.vocab_size\)",
        msg,
    ), msg


def test_a_saved_config_asking_for_an_impossible_vocabulary_is_refused(capsys, run_copy):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["model"]["vocab_size"] = 10**10
    (run_copy / "config.json").write_text(json.dumps(cfg))
    msg = error_of(capsys, ["train", "--out", str(run_copy), "--resume", "--no-progress"])
    assert msg.startswith("training a 640.0B-parameter model (d_model 64, 2 layers, vocabulary 10,000,000,000) with AdamW needs about ")
    msg = error_of(capsys, ["generate", str(run_copy), "--prompt", "The"])
    assert msg.startswith("loading a 640.0B-parameter model (d_model 64, 2 layers, vocabulary 10,000,000,000) needs about ")
    assert msg.endswith(f"; check {run_copy / 'config.json'}, or load it on a machine with more memory")


def test_out_an_existing_file_is_refused(capsys, tiny_data, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert error_of(capsys, train_args(tiny_data, out)) == f"--out {out} is a file, not a folder; name a folder for the run"
    assert error_of(capsys, ["train", "--out", str(out), "--resume"]) == f"--out {out} is a file, not a folder; name a folder for the run"
    assert out.read_text() == "mine"


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make every open-for-writing inside `folder` fail as on a read-only file system."""
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


def test_resume_of_a_read_only_run_folder_is_one_line(capsys, monkeypatch, run_copy):
    before = metrics(run_copy)
    read_only(monkeypatch, run_copy)
    msg = error_of(capsys, ["train", "--out", str(run_copy), "--resume", "--no-progress", "max_iters=20"])
    assert msg == f"cannot write into the run folder {run_copy} (Read-only file system); make it writable or choose another --out"
    assert metrics(run_copy) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="permissions do not bind root")
def test_resume_of_a_folder_without_write_permission_is_one_line(capsys, run_copy):
    run_copy.chmod(0o555)
    try:
        msg = error_of(capsys, ["train", "--out", str(run_copy), "--resume", "--no-progress", "max_iters=20"])
    finally:
        run_copy.chmod(0o755)
    assert msg == f"cannot write into the run folder {run_copy} (Permission denied); make it writable or choose another --out"


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    "safetensors",  # how safetensors itself reports a full disk
])
def test_a_full_disk_during_a_save_is_one_line_and_leaves_no_temporary_folder(capsys, monkeypatch, tiny_data, tmp_path, error):
    import psyduck.runs as runs
    from safetensors import SafetensorError

    if error == "safetensors":
        error = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    real_save_file, calls = runs.save_file, []

    def save_file(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # the weights of the second checkpoint (step 10)
            raise error
        return real_save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(runs, "save_file", save_file)
    out = tmp_path / "run"
    msg = final_error_of(capsys, train_args(tiny_data, out))
    why = "No space left on device" if isinstance(error, OSError) else str(error)
    assert msg == (f"saving checkpoint step_0000010 into {out} failed ({why}); free some space or fix the folder, "
                   f"then resume with: psyduck train --out {out} --resume")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000005"]  # no .tmp-step_0000010-PID
    assert is_loadable(out / "checkpoints" / "step_0000005") and not (out / ".lock").exists()


# -- item 10: wrong answers -----------------------------------------------------------------------

def test_a_negative_time_budget_is_refused(capsys, tiny_data, tmp_path):
    msg = error_of(capsys, train_args(tiny_data, tmp_path / "run", "--max-seconds", "-5"))
    assert msg == "train.max_seconds must be >= 0 (0: train by steps), got -5"


def test_a_no_op_resume_of_a_finished_run_appends_no_row(capsys, run_copy):
    before = metrics(run_copy)
    assert main(["train", "--out", str(run_copy), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert f"{run_copy} is already at step 10 (train.max_iters=10): nothing to train; raise max_iters to train on" in out.err
    assert metrics(run_copy) == before
    assert json.loads(out.out)["step"] == 10 and json.loads(out.out)["tokens"] == before[-1]["tokens"]


# -- item 11: unclear messages ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "empty", "foreign"])
@pytest.mark.parametrize("with_data", [False, True])
def test_resume_of_a_folder_without_a_run_says_there_is_nothing_to_resume(capsys, tiny_data, tmp_path, kind, with_data):
    out = tmp_path / "run"
    if kind != "missing":
        out.mkdir()
    if kind == "foreign":
        (out / "notes.txt").write_text("mine")
    what = {"missing": "does not exist", "empty": "is empty", "foreign": "is not a PsyDuck run (no config.json)"}[kind]
    argv = ["train", "--out", str(out), "--resume", "--no-progress"] + (["--data", str(tiny_data)] if with_data else [])
    assert error_of(capsys, argv) == f"nothing to resume: {out} {what}; start a new run without --resume"
    assert out.exists() == (kind != "missing") and not (out / "config.json").exists()


def test_init_from_a_missing_run_names_the_run_folder(capsys, tiny_data, tmp_path):
    msg = error_of(capsys, train_args(tiny_data, tmp_path / "run", "--init-from", str(tmp_path / "nowhere")))
    assert msg == f"--init-from: {tmp_path / 'nowhere'} does not exist; name a run folder written by `psyduck train`"


def test_a_shape_mismatch_names_the_keys_and_shapes(capsys, finished, tiny_data, tmp_path):
    msg = error_of(capsys, train_args(tiny_data, tmp_path / "run", "--init-from", str(finished), "model.d_model=128"))
    ckpt = list_checkpoints(finished)[-1] / "model.safetensors"
    assert msg.startswith(f"checkpoint {ckpt} does not fit this model's config (")
    assert "tok_emb.weight is (512, 64) in the checkpoint but (512, 128) in the model, " in msg
    assert msg.endswith(" more); check config.json") and "Error(s)" not in msg
