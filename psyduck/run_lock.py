"""One writer per run folder: an exclusive lock on RUN/.lock (used by `RunFolder.lock`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from psyduck.errors import PsyDuckError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there go unlocked
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"  # held by the one process writing the run
Log = Callable[[str], None]


class RunLock:
    """An exclusive hold on a run folder, so one run folder has one writer.

    Two trainers on one folder would interleave their metrics and leave one run's config.json
    beside the other's checkpoints. The hold is `fcntl.flock` on RUN/.lock, and the kernel drops
    it when its process ends, however it ends (SIGKILL included): a lock file left behind by a dead
    process is stale by construction, and the next trainer takes it over. The file holds the PID
    of its holder, for the line the second trainer gets. Released by `release()` (or `with`).
    """

    def __init__(self, run: Path, log: Log | None = None) -> None:
        self.run = run
        self.path = run / LOCK
        self.created = not run.exists()
        self.fd: int | None = None
        if fcntl is None:
            return
        try:
            run.mkdir(parents=True, exist_ok=True)
            self.fd = self._acquire()
            stale = os.read(self.fd, 32).decode("ascii", "replace").strip()
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as e:
            self.release()
            raise PsyDuckError(
                f"cannot write into the run folder {run} ({e.strerror or e}); make it writable or choose another --out"
            ) from None
        if stale and log is not None:
            log(f"took over the lock of {run} left by PID {stale}, which is no longer running")

    def _acquire(self) -> int:
        """Open and flock RUN/.lock; refuse, naming the holder, when another process holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise PsyDuckError(
                    f"{self.run} is in use by another trainer (PID {holder}); wait for it to finish or stop it, "
                    "or choose another --out"
                ) from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder removed the file as we opened it: lock the new one

    def release(self) -> None:
        """Let go (the file goes first, while still held); a folder this lock created and nothing
        else filled is removed too, so a run refused at its start leaves no empty folder."""
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None
        if self.created:
            try:
                self.run.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
