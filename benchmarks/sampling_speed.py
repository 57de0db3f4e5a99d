"""Sampling speed: `sample_next` against the one-running-sum draw it replaced, same logits, same uniforms.

    python benchmarks/sampling_speed.py            # (1|4|16) x 8,192 and (1|16) x 100,277 scores, temperature 0.8
    python benchmarks/sampling_speed.py --quick    # fewer repeats

- baseline: the draw before (natural-log scores and `exp`), written out below: it inverts one
  running sum over the vocabulary with `searchsorted`;
- PsyDuck: `psyduck.generate.sampling.sample_next` (scores in bits and `exp2`; from BLOCKED_MIN
  weights on, 16 x 8,192 and up, the two-level search `draw_blocked` instead of one running sum).
Both get the same logits and the same uniform numbers and pick the same tokens but for rounding at
a boundary (counted, before the clock).
The sides take turns call by call; each shape reports the median microseconds per call and the ratio.
A 16-row step of the server samples 16 x 8,192 scores (docs/performance.md, serving).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import add_common_args, emit, machine, median, rounded, setup  # noqa: E402
from psyduck.generate.sampling import sample_next  # noqa: E402


def baseline_sample(logits: torch.Tensor, temperature: float, uniform: torch.Tensor) -> torch.Tensor:
    """The previous draw: softmax's numerator in natural units, one running sum over the vocabulary."""
    scaled = logits / temperature
    weights = scaled.sub_(scaled.amax(dim=-1, keepdim=True)).exp_()
    cdf = weights.cumsum_(dim=-1)
    return torch.searchsorted(cdf, (1.0 - uniform) * cdf[:, -1:]).squeeze(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--temperature", type=float, default=0.8)
    args = p.parse_args()
    device, _ = setup(args)
    repeats = 200 if args.quick else 2000
    g = torch.Generator().manual_seed(0)
    shapes = {}
    for rows, vocab in [(1, 8192), (4, 8192), (16, 8192), (1, 100_277), (16, 100_277)]:
        logits = (torch.randn(rows, vocab, generator=g) * 3).to(device)  # peaked like a trained model's
        uniforms = [torch.rand(rows, 1, generator=g).to(device) for _ in range(repeats)]
        differ = sum(
            int((baseline_sample(logits, args.temperature, u) != sample_next(logits, args.temperature, uniform=u)).sum())
            for u in uniforms[:200]
        )
        times: dict[str, list[float]] = {"baseline": [], "psyduck": []}
        for u in uniforms:
            for side in times:
                t0 = time.perf_counter()
                if side == "baseline":
                    baseline_sample(logits, args.temperature, u)
                else:
                    sample_next(logits, args.temperature, uniform=u)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[side].append(time.perf_counter() - t0)
        base, ours = median(times["baseline"]) * 1e6, median(times["psyduck"]) * 1e6
        shapes[f"{rows}x{vocab}"] = {
            "baseline_us": base, "psyduck_us": ours, "ratio": base / ours,
            "tokens_differing": f"{differ} of {200 * rows}",
        }
    emit(rounded({"benchmark": "sampling_speed", "temperature": args.temperature, "repeats": repeats,
                  "shapes": shapes, "machine": machine(device)}))


if __name__ == "__main__":
    main()
