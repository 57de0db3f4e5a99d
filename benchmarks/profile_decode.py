"""Where one generated token's time goes: PsyDuck's KV-cache decoding, timed and profiled.

    python benchmarks/profile_decode.py                    # seed-60m shape on the CPU, 64 new tokens
    python benchmarks/profile_decode.py --device cuda      # also compares fp32 / bf16 autocast / bf16 weights

Batch 1, prompt "The world", random weights at the preset's shape (the timing does not depend on
the values). For each precision variant: milliseconds per new token (median of 3 generations),
then a torch.profiler table of the slowest operators over one generation of the first variant.
The last line of stdout is one JSON object with the per-token figures. This is a diagnostic, not
a comparison with the baseline (that is generate_throughput.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import add_common_args, emit, machine, median, rounded, setup  # noqa: E402

from psyduck import hardware  # noqa: E402
from psyduck.config import get_preset  # noqa: E402
from psyduck.generate import DecodeWeights, GenerationParams, stream  # noqa: E402
from psyduck.model import GPT  # noqa: E402


def ms_per_token(model: GPT, weights: DecodeWeights, idx: torch.Tensor, n: int, ctx, device) -> float:  # noqa: ANN001
    runs = []
    for r in range(3):
        with ctx():
            hardware.sync(device)
            t0 = time.perf_counter()
            for tok in stream(model, idx, GenerationParams(n, temperature=1.0, seed=r), weights=weights):
                tok.item()  # a caller printing tokens fetches each one
            runs.append((time.perf_counter() - t0) / n * 1000)
    return median(runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--preset", default="seed-60m")
    p.add_argument("--vocab-size", type=int, default=100_277, help="output layer width (cl100k_base: 100,277)")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rows", type=int, default=15, help="operators shown in the profile table")
    args = p.parse_args()
    device, dtype = setup(args)
    cfg = get_preset(args.preset)
    cfg.model.vocab_size, cfg.model.dropout = args.vocab_size, 0.0
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device).eval()
    idx = torch.tensor([[791, 1917]], device=device)  # "The world" in cl100k_base
    variants = {"float32": (model, contextlib.nullcontext)}
    if device.type == "cuda":
        variants[f"{dtype}_autocast".replace("torch.", "")] = (model, lambda: hardware.autocast(device, dtype))
        variants[f"{dtype}_weights".replace("torch.", "")] = (copy.deepcopy(model).to(dtype), contextlib.nullcontext)
    weights = {name: DecodeWeights.build(m) for name, (m, _) in variants.items()}  # once, as a server does
    per_token = {}
    for name, (m, ctx) in variants.items():
        ms_per_token(m, weights[name], idx, 4, ctx, device)  # warm-up
        per_token[name] = ms_per_token(m, weights[name], idx, args.tokens, ctx, device)
        print(f"[profile_decode] {name}: {per_token[name]:.2f} ms/token", file=sys.stderr, flush=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    name, (m, ctx) = next(iter(variants.items()))
    with torch.profiler.profile(activities=activities) as prof, ctx():
        for tok in stream(m, idx, GenerationParams(args.tokens, temperature=1.0, seed=0), weights=weights[name]):
            tok.item()
    table = prof.key_averages().table(sort_by=sort, row_limit=args.rows)
    print(table, file=sys.stderr, flush=True)
    if device.type == "cuda":
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows), file=sys.stderr, flush=True)
    emit(rounded({"benchmark": "profile_decode", "machine": machine(device), "preset": args.preset,
                  "vocab_size": args.vocab_size, "new_tokens": args.tokens, "ms_per_token": per_token,
                  "tokens_per_s": {k: 1000 / v for k, v in per_token.items()}}))


if __name__ == "__main__":
    main()
