"""Training steps with glibc's default malloc against `hardware.keep_freed_memory` (what `psyduck
train` and `psyduck finetune` set): time per step and page faults per step.

    python benchmarks/train_allocator.py                      # cpu-small and seed-60m, 5 rounds
    python benchmarks/train_allocator.py --preset cpu-small --rounds 3 --steps 20
    python benchmarks/train_allocator.py --quick              # the tiny preset, a smoke run

malloc's settings are per process and cannot be put back (setting a threshold turns its own
adjustment off for good), so each side runs in a child process of its own, one at a time, the
sides taking turns round by round: every child builds the preset (seed 0, the benchmark's real
batches), takes `--warmup` steps, then times `--steps` of PsyDuck's real `train_step` and counts
the minor page faults they took (`getrusage`). Reported per preset and side: the median over the
rounds of ms per step and faults per step; `speedup` is default's ms over keep's.
Prints one JSON object, its last line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIDES = ("default", "keep")


def child(preset: str, side: str, warmup: int, steps: int) -> dict:
    """One side in this process: its malloc setting, then `steps` timed training steps."""
    import torch

    from common import machine
    from train_throughput import batches, preset_config, psyduck_side

    from psyduck import hardware

    kept = hardware.keep_freed_memory() if side == "keep" else False
    cfg, data = preset_config(preset)
    device = torch.device("cpu")
    s = psyduck_side(cfg, device, torch.float32, None)
    pool = batches(cfg, data, min(8, warmup + steps), device)
    for i in range(warmup):
        s.step(*pool[i % len(pool)])
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for i in range(steps):
        s.step(*pool[i % len(pool)])
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"ms_per_step": 1e3 * seconds / steps, "faults_per_step": faults / steps, "kept": kept,
            "machine": machine(device)}


def run_child(preset: str, side: str, warmup: int, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--preset", preset, "--warmup", str(warmup), "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"the {side} child for {preset} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", help="preset to train (repeatable; default cpu-small and seed-60m)")
    p.add_argument("--rounds", type=int, default=5, help="rounds, each side once per round")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 20 for cpu-small and tiny, 5 otherwise)")
    p.add_argument("--quick", action="store_true", help="the tiny preset, 2 rounds")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = p.parse_args()
    presets = args.preset or (["tiny"] if args.quick else ["cpu-small", "seed-60m"])
    if args.child:
        print(json.dumps(child(presets[0], args.child, args.warmup, args.steps)))
        return
    rounds = 2 if args.quick else args.rounds
    result: dict = {"benchmark": "train_allocator", "rounds": rounds, "presets": {}}
    for preset in presets:
        steps = args.steps or (20 if preset in ("cpu-small", "tiny") else 5)
        runs: dict[str, list[dict]] = {side: [] for side in SIDES}
        for r in range(rounds):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:  # who goes first alternates
                row = run_child(preset, side, args.warmup, steps)
                runs[side].append(row)
                print(f"[train_allocator] {preset} round {r + 1} {side:7s} {row['ms_per_step']:8.1f} ms/step "
                      f"{row['faults_per_step']:9.0f} faults/step", file=sys.stderr, flush=True)
        sides = {side: {"ms_per_step": round(statistics.median(x["ms_per_step"] for x in rows), 2),
                        "faults_per_step": round(statistics.median(x["faults_per_step"] for x in rows)),
                        "kept": rows[0]["kept"]} for side, rows in runs.items()}
        result["machine"] = runs["default"][0]["machine"]
        result["presets"][preset] = {"steps": steps, **sides,
                                     "speedup": round(sides["default"]["ms_per_step"] / sides["keep"]["ms_per_step"], 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
