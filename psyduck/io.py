"""Files that are whole or absent: the one atomic write, and the one metrics.jsonl reader.

A program can be killed between any two instructions, and a disk can lose what sits in its cache.
A file written in place can therefore be seen half-written: a truncated config.json, a PNG that
stops halfway. The cure is old and simple (it is how editors and databases save):

    1. write the new content to a temporary file in the *same* folder (so the rename below never
       crosses file systems and stays one atomic step);
    2. fsync the temporary file: its bytes are on the disk, not only in the page cache;
    3. rename it over the destination (`os.replace`): readers see the old file or the new one;
    4. fsync the folder: the rename itself is on the disk.

Every file PsyDuck writes whole goes through `atomic_path` (for a file another library writes:
safetensors, matplotlib, gguf) or the helpers on top of it (bytes, text, JSON); a checkpoint, a
folder of files, goes through `atomic_folder`, the same four steps for a folder. Temporary names
start with a dot and carry the writer's process id, so two writers never share one and debris of a
killed writer is recognisable (`writer_alive`).

metrics.jsonl is appended to, one JSON object per line, while others read it (the plot, the
server's loss-curve tab, `--resume` truncating it): `read_jsonl` is the one reader, and it skips a
line being written at that moment instead of failing on it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_folder(folder: str | Path) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush a finished file's bytes to the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def temp_name(path: Path, kind: str = "tmp") -> Path:
    """The hidden temporary name beside `path`: .tmp-NAME-PID (the pid tells whose it is)."""
    return path.with_name(f".{kind}-{path.name}-{os.getpid()}")


def writer_alive(temp: Path) -> bool:
    """Whether the process that named this temporary file or folder is another live process."""
    try:
        pid = int(temp.name.rsplit("-", 1)[-1])
        os.kill(pid, 0)
        return pid != os.getpid()
    except (ValueError, OSError):
        return False


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it becomes `path` atomically.

        with atomic_path(out / "model.safetensors") as tmp:
            save_file(tensors, str(tmp))

    If the body raises, the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a no-op after the rename
    fsync_folder(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file, fsync, rename, folder fsync)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON (UTF-8, non-ASCII kept readable, a final newline) atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `folder`; on success it replaces `folder` as one rename.

    Every file inside is fsynced before the rename makes the folder visible. An existing `folder`
    (e.g. a checkpoint of the same step saved again) is first moved aside, then removed. If the body
    raises, the temporary folder is removed. Stray temporary folders of killed writers are cleaned
    up by whoever lists the parent (`writer_alive` tells them apart from a live writer's).
    """
    folder = Path(folder)
    tmp = temp_name(folder)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                fsync_file(f)
        if folder.exists():
            old = temp_name(folder, "old")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op after the rename
    fsync_folder(folder.parent)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, in order; [] when it does not exist yet.

    A line that is not a complete JSON object (the one being appended right now, or a torn last
    line after a kill) is skipped; bytes that are not UTF-8 become U+FFFD instead of an error.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def keep_jsonl_rows(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite a JSON-lines file atomically with only the rows `keep` accepts (torn lines dropped)."""
    path = Path(path)
    if path.exists():
        rows = [row for row in read_jsonl(path) if keep(row)]
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))



def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float (nested in dicts and lists) replaced by None.

    JSON has no NaN or Infinity: Python's `json.dumps` writes them anyway, as tokens other parsers
    refuse. A diverged run's loss is therefore written as null (then `json.dumps(..., allow_nan=False)`).
    """
    if isinstance(value, dict):
        return {k: json_safe(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(x) for x in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value
