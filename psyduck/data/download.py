"""Fetching a corpus file once into the user's cache, safely.

    ~/.cache/psyduck/                  $PSYDUCK_CACHE, else $XDG_CACHE_HOME/psyduck, else ~/.cache/psyduck
        sales-textbook/sales_textbook.txt

Design choices:
- Download once, reuse forever: a file already in the cache is used without touching the network.
- Never a half file under the real name: bytes go to a hidden temporary file in the same folder
  (``.sales_textbook.txt.<random>.part``), which is renamed over the real name only after the
  whole body arrived and its size matches the server's Content-Length. An interrupted download
  (lost connection, Ctrl-C, a server that closes early) deletes its temporary file, so a later run
  starts over instead of mistaking a fragment for the dataset. Two concurrent downloads each use
  their own temporary file; the rename is atomic.
- A progress bar (tqdm, on stderr) with bytes and MB/s.
- Standard library only (`urllib`); redirects (Hugging Face answers with one to its CDN) are followed.
- Every failure is one line naming the URL and where to put the file by hand.
"""

from __future__ import annotations

import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from psyduck.errors import PsyDuckError
from psyduck.io import atomic_path

CHUNK = 1 << 16  # bytes per read
TIMEOUT_S = 60  # seconds without an answer before we give up


def cache_dir() -> Path:
    """Where downloaded corpora live: $PSYDUCK_CACHE, else $XDG_CACHE_HOME/psyduck, else ~/.cache/psyduck."""
    if os.environ.get("PSYDUCK_CACHE"):
        return Path(os.environ["PSYDUCK_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "psyduck"


def fetch(url: str, dest: Path, *, what: str, show_progress: bool = True) -> Path:
    """`dest`, downloading it from `url` first if it is not there yet (see the module docstring).

    `what` names the file in messages ("the sales textbook"). Raises PsyDuckError when offline,
    on an HTTP error, or when the body is shorter (or longer) than the server announced.
    """
    if dest.is_file():
        return dest
    by_hand = f"download {url} by hand and save it as {dest}, or pass --path FILE"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:  # a broken download never takes the name (the fragment is removed)
        with open(tmp, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "psyduck"})
            try:
                response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
            except urllib.error.HTTPError as e:
                raise PsyDuckError(f"cannot download {what}: {url} answered HTTP {e.code} {e.reason}; {by_hand}") from None
            except (urllib.error.URLError, OSError) as e:
                host = urllib.parse.urlsplit(url).netloc
                raise PsyDuckError(f"cannot download {what}: {host} is unreachable (offline?); {by_hand}") from e
            with response:
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                got = 0
                with tqdm(
                    total=expected, unit="B", unit_scale=True, desc=f"downloading {dest.name}",
                    disable=not show_progress, file=sys.stderr,
                ) as bar:
                    try:
                        while chunk := response.read(CHUNK):
                            out.write(chunk)
                            got += len(chunk)
                            bar.update(len(chunk))
                    except (OSError, http.client.HTTPException):
                        pass  # a broken connection: the size check below reports it
        if (expected is not None and got != expected) or got == 0:
            of = f" of {expected:,}" if expected is not None else ""
            raise PsyDuckError(
                f"download of {what} from {url} was interrupted ({got:,}{of} bytes); "
                f"run the command again, or {by_hand}"
            )
    return dest
