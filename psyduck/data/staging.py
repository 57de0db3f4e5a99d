"""Where a prepare writes while it works, and how the result replaces what was there.

A prepare never writes into ``--out`` itself. It works in a hidden sibling folder,
``.<out>.partial``, and only when everything is written (meta.json last) renames that folder over
``--out``. So:

- a prepare killed at any moment leaves ``--out`` exactly as it was (old data still loads), and the
  partial folder holds what was done, with ``progress.json`` saying how far (see prepare.py: the
  next prepare with the same arguments continues from there);
- ``--out`` may hold earlier prepared data (replaced whole, no stale shard left behind), or be
  empty, or not exist; a folder holding a training run or files prepare did not write is refused
  unless ``--force`` says to replace it on purpose (pointing --out at a run once overwrote its
  tokenizer.json and the run then generated garbage).
- The swap is two renames (``--out`` aside to ``.<out>.old``, the partial folder in), then the old
  one is deleted; a kill between the two is repaired by the next prepare.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from psyduck.io import fsync_folder
from psyduck.data.shards import SPLITS
from psyduck.errors import PsyDuckError

PROGRESS = "progress.json"  # in the partial folder: what is done (absent once complete)
_OURS = re.compile(rf"(tokenizer\.json|meta\.json|{PROGRESS}|(?:{'|'.join(SPLITS)})_\d+\.bin|\..*\.tmp)")
_RUN_MARKS = ("config.json", "checkpoints", "metrics.jsonl", "source.json")  # what a run folder holds


def partial_dir(out: Path) -> Path:
    """The hidden work folder beside `out`."""
    return out.parent / f".{out.name}.partial"


def _old_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.old"


def check_out(out: Path, force: bool) -> None:
    """Refuse an --out that is a file, holds a run, or holds foreign files (unless `force`)."""
    if out.exists() and not out.is_dir():
        raise PsyDuckError(f"--out {out} is a file; choose a folder name")
    if not out.is_dir() or force:
        return
    names = sorted(p.name for p in out.iterdir())
    run = [n for n in names if n in _RUN_MARKS]
    if run:
        raise PsyDuckError(
            f"--out {out} holds a training run ({run[0]}); prepare into another folder, or pass --force to replace it"
        )
    foreign = [n for n in names if not _OURS.fullmatch(n)]
    if foreign:
        raise PsyDuckError(
            f"--out {out} holds files prepare did not write ({foreign[0]}); choose a new or empty folder, "
            "or pass --force to replace it"
        )


def repair(out: Path) -> None:
    """Undo a swap that was cut between its two renames: put the old folder back."""
    old = _old_dir(out)
    if old.is_dir() and not out.exists():
        os.replace(old, out)
    shutil.rmtree(old, ignore_errors=True)


def swap_in(partial: Path, out: Path) -> None:
    """Make the finished partial folder `out`, replacing what was there.

    Temporary files a killed earlier attempt left behind (`.tmp-NAME-PID`, see io.temp_name) are
    removed first: this prepare has finished writing, so any that remain are not its own."""
    for stale in partial.glob(".tmp-*"):
        stale.unlink(missing_ok=True)
    old = _old_dir(out)
    shutil.rmtree(old, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        os.replace(out, old)
    os.replace(partial, out)
    fsync_folder(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def read_progress(partial: Path) -> dict | None:
    """The partial folder's progress record, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((partial / PROGRESS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
