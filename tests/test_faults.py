"""Runs survive faults: SIGKILL after or during a checkpoint, Ctrl-C, and several processes (DDP, gloo).

These start real processes, because a kill cannot be simulated inside the test process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from psyduck.runs import is_loadable, latest_checkpoint, list_checkpoints

from conftest import REPO, metrics, run_cli

# A child that trains the tiny config and SIGKILLs itself at a chosen moment.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import psyduck.runs as runs
    from psyduck.config import load_config_json
    from psyduck.train import train

    cfg_path, out, mode, when = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    saves = {"n": 0}
    real_save_file, real_replace = runs.save_file, os.replace

    def save_file(tensors, path, *a, **k):
        saves["n"] += 1
        if mode == "model" and saves["n"] == 2 * when - 1:  # half-written model.safetensors
            with open(path, "wb") as f:
                f.write(b"\\x00" * 100)
            die()
        if mode == "optimizer" and saves["n"] == 2 * when:
            real_save_file(tensors, path, *a, **k)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            die()
        return real_save_file(tensors, path, *a, **k)

    def replace(src, dst):
        if mode == "rename" and os.path.basename(str(dst)).startswith("step_") and saves["n"] == 2 * when:
            die()
        real_replace(src, dst)
        if mode == "after" and os.path.basename(str(dst)).startswith("step_") and saves["n"] == 2 * when:
            die()

    runs.save_file, os.replace = save_file, replace  # os.replace: psyduck.io's atomic rename
    train(load_config_json(cfg_path), out, progress=False)
    """
)


def write_cfg(cfg, path: Path) -> Path:
    from psyduck.io import write_json_atomic

    write_json_atomic(path, cfg.to_dict())
    return path


def run_child(cfg_path: Path, out: Path, mode: str, when: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(cfg_path), str(out), mode, str(when)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )


def comparable(run: Path) -> list[tuple]:
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in metrics(run)]


@pytest.fixture()
def fault_cfg(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace({"max_iters": 40, "eval_interval": 10, "model.dropout": 0.1, "sample_tokens": 0})
    return cfg, write_cfg(cfg, tmp_path / "cfg.json")


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted_run(fault_cfg, tmp_path):
    from psyduck.train import train

    cfg, cfg_path = fault_cfg
    train(cfg, tmp_path / "straight", progress=False)
    child = run_child(cfg_path, tmp_path / "killed", "after", when=2)  # killed right after saving step 20
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert latest_checkpoint(tmp_path / "killed").name == "step_0000020"
    train(None, tmp_path / "killed", resume=True, progress=False)
    assert comparable(tmp_path / "killed") == comparable(tmp_path / "straight")


@pytest.mark.parametrize("mode", ["model", "optimizer", "rename"])
def test_sigkill_during_save_leaves_a_loadable_checkpoint(fault_cfg, tmp_path, mode):
    cfg, cfg_path = fault_cfg
    out = tmp_path / "run"
    child = run_child(cfg_path, out, mode, when=2)  # dies while saving step 20; step 10 is complete
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert [c.name for c in list_checkpoints(out)] == ["step_0000010"]
    assert is_loadable(list_checkpoints(out)[0])
    from psyduck.train import train

    assert train(None, out, resume=True, progress=False)["step"] == 40
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # debris cleaned
    assert [r["step"] for r in metrics(out)] == [0, 10, 20, 30, 40]


def test_damaged_newest_checkpoint_is_skipped_on_resume(fault_cfg, tmp_path):
    from psyduck.train import train

    cfg, _ = fault_cfg
    out = tmp_path / "run"
    train(cfg.replace({"max_iters": 20}), out, progress=False)
    newest = list_checkpoints(out)[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk that lost the end of the file
    resumed = run_cli("train", "--out", str(out), "--resume", "--no-progress", "max_iters=30")
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped damaged checkpoint {out / 'checkpoints' / 'step_0000020'} (model.safetensors: " in resumed.stderr
    assert "; using step_0000010\n" in resumed.stderr
    assert f"resuming from {out / 'checkpoints' / 'step_0000010'} (step 10)" in resumed.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_prints_resume_command(tiny_data, tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "psyduck", "train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(out),
         "--no-progress", "max_iters=100000", "eval_interval=5", "sample_tokens=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    deadline = time.time() + 120
    while not list_checkpoints(out) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr  # 130 for SIGINT, 143 for SIGTERM: the run did not finish
    assert f"stopped by {sig.name} at step" in stderr
    assert f"resume with: psyduck train --out {out} --resume" in stderr
    newest = list_checkpoints(out)[-1]
    assert is_loadable(newest)
    assert "signal" in (newest / "state.json").read_text()
    result = json.loads(stdout)  # the true counts, not those of the last evaluation
    assert result["stopped_by"] == sig.name and f"at step {result['step']};" in stderr
    assert result["tokens"] == result["step"] * 256  # 256 tokens a step (tiny preset); not 0, not the last evaluation's
    assert json.loads((newest / "state.json").read_text())["tokens_seen"] == result["tokens"]


def test_two_gloo_processes_match_one_process_with_double_accumulation(tiny_data, tmp_path):
    common = ["--preset", "tiny", "--data", str(tiny_data), "--no-progress", "max_iters=12", "eval_interval=6",
              "sample_tokens=0", "batch_size=4", "device=cpu"]
    single = run_cli("train", "--out", str(tmp_path / "one"), "grad_accum=2", *common)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "psyduck", "train", "--out", str(tmp_path / "two"), "grad_accum=2", *common],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stderr
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 6, 12]
    for a, b in zip(one, two, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
