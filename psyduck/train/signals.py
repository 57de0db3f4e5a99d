"""Ctrl-C and SIGTERM, the polite way: finish the step, save, say how to resume, exit 130 or 143.

A signal handler runs between any two bytecodes, so it does nothing but call back the trainer,
which raises a flag; the loop reads the flag after each optimizer step and saves there, never
from inside the handler. A second signal stops at once (the trainer raises KeyboardInterrupt).
`exit_status` is the shell's convention, 128 + the signal's number, so a script that started the
run can tell that it did not finish.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any, Callable

CAUGHT = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Route SIGINT and SIGTERM to `on_signal(name)` while installed; `restore` puts the old handlers back."""

    def __init__(self, on_signal: Callable[[str], None]) -> None:
        self.on_signal = on_signal
        self.old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        self.on_signal(signal.Signals(signum).name)

    def install(self) -> None:
        for sig in CAUGHT:
            try:
                self.old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass

    def restore(self) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        self.old = {}


def exit_status(name: str | None) -> int:
    """The exit status of a run stopped by signal `name`: 130 for SIGINT, 143 for SIGTERM; 0 for none.

    A rank stopped because another rank was signalled ("peer signal") reports SIGTERM's status.
    """
    if name is None:
        return 0
    try:
        return 128 + signal.Signals[name].value
    except KeyError:
        return 128 + signal.SIGTERM.value
