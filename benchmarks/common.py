"""What the benchmarks share: data, device and precision flags, a measured FLOP/s peak, JSON output.

Every benchmark runs the seed-style baseline (benchmarks/baselines/seed_gpt.py) and PsyDuck side by
side in one process, on the same data and weights where that makes sense, and prints one JSON object
as its last line with both sides' figures and a `ratio` (PsyDuck over baseline).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from psyduck import hardware  # noqa: E402
from psyduck.data.loader import TokenData  # noqa: E402


def data_folder(tokenizer: str) -> Path:
    """data/bench-<tokenizer>: the embedded corpus (wiki-vital) prepared once and cached."""
    return REPO / "data" / f"bench-{tokenizer.replace('_base', '').replace('-', '')}"


def bench_data(tokenizer: str) -> TokenData:
    folder = data_folder(tokenizer)
    if not (folder / "meta.json").exists():
        from psyduck.data.prepare import prepare

        print(f"preparing wiki-vital with {tokenizer} into {folder} (once)...", file=sys.stderr, flush=True)
        prepare("wiki-vital", tokenizer, folder, show_progress=False)
    return TokenData(folder)


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a smoke run: under two minutes")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    p.add_argument(
        "--dtype", default="auto", help="auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16 | float16"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile both sides' models")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"],
                   help="torch.compile mode with --compile (max-autotune-*: Triton GEMMs tuned per shape, slow to compile)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: PyTorch's default)")


def setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = hardware.pick_device(args.device)
    dtype = hardware.pick_dtype(device, args.dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, dtype


def compile_mode(args: argparse.Namespace) -> str | None:
    """None for eager, else the torch.compile mode both sides use."""
    return args.compile_mode if args.compile else None


def machine(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def measured_peak(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048)) -> float:
    """The best matmul FLOP/s seen over square sizes, in this process, now (the MFU denominator).

    On a CPU this is a measurement; on a known GPU, PsyDuck's datasheet table (hardware.peak_flops)
    is used when it is higher, so MFU is never flattered by a slow measurement.
    """
    best = hardware.measured_peak_flops(device, dtype, sizes, seconds=0.4)
    if device.type == "cuda":
        best = max(best, hardware.peak_flops(device, dtype))
    return best


class Timer:
    """Wall-clock seconds of a block, with the device synchronised on both sides."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> "Timer":
        hardware.sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        hardware.sync(self.device)
        self.seconds = time.perf_counter() - self.start


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def emit(result: dict) -> None:
    """The benchmark's result: one JSON object, the last line of stdout."""
    print(json.dumps(result, default=_round), flush=True)


def _round(x):  # noqa: ANN001
    return str(x)


def rounded(obj, digits: int = 4):  # noqa: ANN001
    """Round floats for readable JSON (to `digits` significant digits)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if obj == obj and abs(obj) != float("inf") else obj
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


class HeldOut:
    """The first documents of the val split, as windows, and their UTF-8 byte count.

    The split is per document and does not depend on the tokenizer, so sides with different
    tokenizers score the same text; bits per byte (summed nats / ln 2 / UTF-8 bytes) makes their
    losses comparable. Used by time_to_quality.py for every side.
    """

    def __init__(self, data: TokenData, min_bytes: int, block_size: int, batch_size: int) -> None:
        tok = data.tokenizer()
        val = np.asarray(data.tokens("val")).astype(np.int64)
        ends = np.flatnonzero(val == data.eot_id)
        text_bytes, n_docs, start = 0, 0, 0
        for end in ends:
            text_bytes += len(tok.decode(val[start:end].tolist()).encode("utf-8"))
            n_docs += 1
            start = end + 1
            if text_bytes >= min_bytes:
                break
        ids = val[:start]  # whole documents, each followed by its end-of-text token
        first = len(tok.decode(ids[:1].tolist()).encode("utf-8"))  # the first token is never predicted
        self.documents, self.bytes, self.tokens = n_docs, text_bytes - first, len(ids) - 1
        self.text_sha = hash(tok.decode(ids.tolist()))  # same documents on both sides (checked by the caller)
        T = block_size
        xs, ys = [], []
        for s in range(0, len(ids) - 1, T):
            w = ids[s : s + T + 1]
            x = np.zeros(T, dtype=np.int64)
            y = np.full(T, -1, dtype=np.int64)  # a short last window is padded; -1 is not scored
            x[: len(w) - 1], y[: len(w) - 1] = w[:-1], w[1:]
            xs.append(x)
            ys.append(y)
        X, Y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        self.batches = [(X[i : i + batch_size], Y[i : i + batch_size]) for i in range(0, len(X), batch_size)]

    @torch.no_grad()
    def bits_per_byte(self, loss_sum, device, autocast) -> float:  # noqa: ANN001
        nats = 0.0
        for x, y in self.batches:
            with autocast:
                nats += float(loss_sum(x.to(device), y.to(device)))
        return nats / math.log(2) / self.bytes
