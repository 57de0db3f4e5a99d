"""How many CPU threads one decode step should use: `decode_threads`.

A decode step of one sequence multiplies a single row of activations by each weight matrix. Each
product is short (microseconds to a few hundred for the presets) and bound by memory, not
arithmetic, so splitting it over threads buys little, while every split costs a fork and a join of
torch's thread team. On a shared host the join is worse: it waits for the slowest thread, and a
thread whose core is busy elsewhere is descheduled for a whole time slice. Batch-1 generation with
torch's default (one thread per core) then runs several times slower than with one thread
(docs/performance.md ("Decode threads") has the measurements and their command).

So for a model of up to `ONE_THREAD_MAX_PARAMS` parameters (every preset, gpt2-124m included)
decoding on a CPU uses one thread unless told otherwise. Larger models, GPUs, and anyone who set
OMP_NUM_THREADS or MKL_NUM_THREADS keep torch's count. `psyduck generate --threads N` and
`psyduck serve --threads N` choose it outright (more threads can pay on an idle many-core host
for the larger presets). The CLI applies the answer with `torch.set_num_threads` at its entry,
the one place a process-wide setting belongs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from psyduck.errors import PsyDuckError

ONE_THREAD_MAX_PARAMS = 150_000_000  # measured up to gpt2-124m (docs/performance.md ("Decode threads"))
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # the user already chose


def decode_threads(
    num_params: int, device: torch.device | str, requested: int | None = None, environ: Mapping[str, str] = os.environ
) -> int:
    """The intra-op thread count for decoding a model of `num_params` parameters on `device`.

    `requested` (the `--threads` flag) wins; otherwise one thread for a small model on a CPU (see
    above), else torch's current count.
    """
    if (threads := check_threads(requested)) is not None:
        return threads
    if torch.device(device).type != "cpu" or any(environ.get(k) for k in THREAD_ENV):
        return torch.get_num_threads()
    return 1 if num_params <= ONE_THREAD_MAX_PARAMS else torch.get_num_threads()


def check_threads(requested: int | None) -> int | None:
    """Refuse a `--threads` value that is not a positive integer (before any model loads)."""
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 1):
        raise PsyDuckError(f"--threads must be a positive integer, got {requested!r}")
    return requested
