"""Training by the clock: how long a run has trained, and when it evaluates and stops.

With `train.max_seconds` set (`psyduck train --minutes 10`), the time budget, not `max_iters`,
decides how long a run is. A fast machine takes more steps in it and a slow one fewer, but both
get a whole schedule: the learning rate follows the share of the budget spent (`step.lr_at` with a
`fraction`), and `max_iters` only draws the schedule's shape, which the budget then stretches:

- warmup lasts warmup_iters/max_iters of the budget, and the rate reaches min_lr as it ends;
- the loss is evaluated max_iters/eval_interval times (at most 20), evenly spread: every budget/N s;
- when the budget is spent the run evaluates and checkpoints one last time, and stops.

The seconds counted are the training loop's wall clock (steps, evaluations, checkpoints), and a
checkpoint stores them (`train_seconds`), so `--resume` continues the schedule where it stopped.
Resume is bit-exact only by steps: by the clock, the fraction at each step depends on how fast
each step ran, which no two runs repeat.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from psyduck.config import TrainConfig


class Clock:
    """The seconds a run has trained (`used` before this process, plus this process's), against
    an optional budget (0: the run is measured in steps and the clock only keeps time)."""

    def __init__(self, budget: float, used: float = 0.0) -> None:
        self.budget = budget
        self.used = used
        self.start = time.perf_counter()

    @property
    def by_time(self) -> bool:
        return self.budget > 0

    def seconds(self) -> float:
        """Training seconds so far, across resumes."""
        return self.used + time.perf_counter() - self.start

    def fraction(self) -> float | None:
        """The share of the budget spent (0..1), or None for a run measured in steps."""
        return min(1.0, self.seconds() / self.budget) if self.by_time else None

    def left(self) -> float:
        """Seconds of budget left (0 when spent, or when there is no budget)."""
        return max(0.0, self.budget - self.seconds()) if self.by_time else 0.0

    def expired(self) -> bool:
        return self.by_time and self.seconds() >= self.budget


class Cadence:
    """Due every `period` seconds of training time (at period, 2 x period, ...), each mark once.

    A resumed run's first mark is the first one after the seconds already used. `due` only looks
    and `advance` moves on, so several processes can agree first (any rank's "due" counts for
    all) and then all move past the same mark, whichever clock read what.
    """

    def __init__(self, period: float, now: float) -> None:
        self.period = period
        self.next = self._after(now)

    def _after(self, now: float) -> float:
        return (math.floor(now / self.period) + 1) * self.period

    def due(self, now: float) -> bool:
        return now >= self.next

    def advance(self, now: float) -> None:
        """Past the mark now due, and past every mark already behind `now` (one evaluation for a
        step that spans several)."""
        self.next = max(self._after(now), self.next + self.period)


MAX_EVALUATIONS = 20  # by the clock, at most this many per budget: a preset drawn over 10,000 steps
# (seed-60m) would otherwise evaluate more often than it steps


def eval_period(t: TrainConfig) -> float:
    """Seconds between evaluations by the clock: the step schedule's evaluations, spread evenly
    over the budget (max_iters/eval_interval of them, 1 to MAX_EVALUATIONS)."""
    evaluations = round(t.max_iters / t.eval_interval) if t.max_iters else 1
    return t.max_seconds / min(MAX_EVALUATIONS, max(1, evaluations))


def format_seconds(seconds: float) -> str:
    """12 s, 4m05s, 1h02m: how long, at a glance."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Timetable:
    """When a run evaluates and ends: by steps, or by the clock.

    `agree` turns one process's answer into every process's (`Distributed.any_rank`): under DDP
    all ranks must evaluate, and stop, at the same step, whatever their own clocks read.
    """

    def __init__(self, t: TrainConfig, used: float = 0.0, agree: Callable[[bool], bool] = bool) -> None:
        self.train, self.agree = t, agree
        self.clock = Clock(t.max_seconds, used)
        self.cadence = Cadence(eval_period(t), used) if self.clock.by_time else None

    def done(self, step: int) -> bool:
        """By steps: max_iters are done. By the clock: the budget is spent."""
        if self.clock.by_time:
            return self.agree(self.clock.expired())
        return step >= self.train.max_iters

    def eval_due(self, step: int) -> bool:
        """By steps: every eval_interval steps and at the last. By the clock: at each mark of the
        cadence before the budget ends (the end has its own evaluation)."""
        if self.cadence is None:
            return step % self.train.eval_interval == 0 or step == self.train.max_iters
        now = self.clock.seconds()
        due = self.agree(self.cadence.due(now) and not self.clock.expired())
        if due:
            self.cadence.advance(now)
        return due

    def describe(self) -> str:
        """One line for the start of a run by the clock."""
        t, left = self.train, format_seconds(self.clock.left())
        if self.clock.expired():
            return f"the time budget of {format_seconds(t.max_seconds)} is already spent; a longer --minutes trains on"
        return (
            f"training by the clock: {format_seconds(t.max_seconds)} ({left} left), the {t.schedule} schedule "
            f"over the budget, an evaluation every {format_seconds(eval_period(t))}"
        )
