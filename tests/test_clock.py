"""Training by the clock: the schedule follows the share of a time budget spent, and resume continues it."""

from __future__ import annotations

import json

import pytest

from psyduck.cli import build_config, make_parser
from psyduck.config import TrainConfig
from psyduck.runs import list_checkpoints
from psyduck.train import Trainer, lr_at, train
from psyduck.train.clock import Cadence, eval_period, format_seconds
from psyduck.train.telemetry import ProgressBar

from conftest import metrics, run_cli


def test_lr_follows_the_share_of_the_budget_spent():
    t = TrainConfig(lr=1.0, min_lr=0.1, schedule="cosine", warmup_iters=10, max_iters=100, max_seconds=60)
    # warmup is warmup_iters/max_iters = 10% of the budget, from 0; the step does not matter
    assert lr_at(0, t, 0.0) == 0.0
    assert lr_at(999, t, 0.05) == pytest.approx(0.5)
    assert lr_at(0, t, 0.1) == pytest.approx(1.0)
    assert lr_at(0, t, 0.55) == pytest.approx(0.55)  # half way through the cosine: (lr + min_lr) / 2
    assert lr_at(0, t, 1.0) == pytest.approx(0.1)
    assert lr_at(0, t, 1.5) == pytest.approx(0.1)  # past the budget: stays at min_lr
    assert lr_at(0, TrainConfig(lr=3e-4), 0.7) == 3e-4  # constant ignores the clock


def test_wsd_holds_the_rate_then_decays_linearly_over_the_last_share():
    t = TrainConfig(lr=1.0, min_lr=0.0, schedule="wsd", warmup_iters=10, max_iters=100, decay_fraction=0.2)
    by_steps = [lr_at(s, t) for s in (0, 9, 50, 80, 90, 100)]
    assert by_steps == pytest.approx([0.1, 1.0, 1.0, 1.0, 0.5, 0.0])
    by_clock = [lr_at(0, t, f) for f in (0.05, 0.1, 0.5, 0.8, 0.9, 1.0)]
    assert by_clock == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.5, 0.0])
    with pytest.raises(Exception, match=r"train.decay_fraction must be in \(0, 1\], got 0.0"):
        TrainConfig(decay_fraction=0.0)


def test_evaluations_by_the_clock_are_spread_over_the_budget():
    assert eval_period(TrainConfig(max_iters=160, eval_interval=40, max_seconds=300)) == 75.0
    assert eval_period(TrainConfig(max_iters=10_000, eval_interval=50, max_seconds=600)) == 30.0  # at most 20
    c = Cadence(10.0, now=0.0)
    assert not c.due(9.9) and c.due(10.0)
    c.advance(10.2)
    assert c.next == 20.0 and not c.due(19.0)
    c.advance(c.next + 0.0)  # another rank said due: move past the same mark, however early this clock is
    assert c.next == 30.0
    c.advance(55.0)  # a step that spans several marks: one evaluation
    assert c.next == 60.0
    assert Cadence(10.0, now=25.0).next == 30.0  # resumed at 25 s: the next mark is 30 s
    assert [format_seconds(s) for s in (3.2, 245, 3720)] == ["3 s", "4m05s", "1h02m"]


def test_a_run_by_the_clock_ends_near_its_budget_with_the_rate_at_min_lr(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg.replace({"max_seconds": 3, "max_iters": 20, "eval_interval": 10, "sample_tokens": 0})
    result = train(cfg, run, progress=False)
    rows = metrics(run)
    t = cfg.train
    assert 3.0 <= rows[-1]["elapsed_s"] < 3.0 + 20  # the final evaluation, when the budget is spent
    assert (rows[-1]["lr"] - t.min_lr) / (t.lr - t.min_lr) < 0.05  # the cosine finished, not cut short
    assert result["step"] == rows[-1]["step"] > 0
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})  # one row per evaluation
    assert len(rows) <= 1 + 2 + 1  # step 0, the cadence's marks (every 1.5 s) and the end
    state = json.loads((list_checkpoints(run)[-1] / "state.json").read_text())
    assert state["reason"] in ("time budget", "eval") and state["step"] == result["step"]
    assert state["train_seconds"] == pytest.approx(rows[-1]["elapsed_s"], abs=2.0)


def test_resume_continues_the_clock_and_the_schedule(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg.replace({"max_seconds": 2, "eval_interval": 10, "max_iters": 20, "sample_tokens": 0})
    first = train(cfg, run, progress=False)
    used = json.loads((list_checkpoints(run)[-1] / "state.json").read_text())["train_seconds"]
    assert used >= 2.0
    longer = cfg.replace({"max_seconds": 4})
    trainer = Trainer(longer, run, resume=True, progress=False)
    assert trainer.train_seconds == used and trainer.clock.seconds() >= used
    assert trainer.clock.fraction() == pytest.approx(used / 4, abs=0.1)  # the schedule picks up half way
    result = trainer.run()
    rows = metrics(run)
    assert result["step"] > first["step"]
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed) and 4.0 <= elapsed[-1] < 4.0 + 20  # one clock across both processes
    t = longer.train
    assert (rows[-1]["lr"] - t.min_lr) / (t.lr - t.min_lr) < 0.05


def test_minutes_sets_the_time_budget():
    args = make_parser().parse_args(["train", "--preset", "tiny", "--minutes", "0.5"])
    assert build_config(args).train.max_seconds == 30.0


def test_minutes_and_max_seconds_together_are_refused(tmp_path):
    r = run_cli("train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--minutes", "1", "--max-seconds", "5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "psyduck: error: --minutes and --max-seconds both set the time budget; give only one of them"
    )


def test_progress_bar_by_the_clock_shows_the_time_left(capsys):
    bar = ProgressBar(True, total=50, initial=0, budget=300.0, used=0.0)
    bar.step(5.0, 1000.0, 0.1, step=7, seconds=55.0)
    bar.close()
    err = capsys.readouterr().err
    assert "step=7" in err and "left=4m05s" in err and "55/300 s" in err
