"""Time to quality: the seed recipe, PsyDuck's `cpu-small` and nanoGPT's recipe, same clock, same text.

    python benchmarks/time_to_quality.py                  # 10 minutes of training per side (about 35 min in all)
    python benchmarks/time_to_quality.py --minutes 3      # shorter budgets (used for the cpu-small sweep)
    python benchmarks/time_to_quality.py --quick          # smoke run, under two minutes
    python benchmarks/time_to_quality.py --sides cpu-small,nanogpt --minutes 5
    python benchmarks/time_to_quality.py --only cpu-small --target-bpb 2.16 --minutes 2 lr=3e-3 n_layer=4
    python benchmarks/time_to_quality.py --device cuda
    python benchmarks/time_to_quality.py --sides cpu-small,nanogpt --minutes 2 --variant muon:train.optimizer=muon

The three sides (`--sides`, default all):
- seed recipe: the seed-style baseline model (benchmarks/baselines/seed_gpt.py) at `seed-60m`
  (cl100k_base, d 256, 12 blocks, context 128, dropout 0.1), trained the seed's way: batch 16,
  AdamW default constructor at a constant 3e-4, full logits + cross-entropy. (The faithful choice;
  PsyDuck's own trainer would run the same recipe about twice as fast, see train_throughput.py.)
- cpu-small: PsyDuck's `Trainer` (its real `train_step`: its optimizer, fused output layer + loss,
  clipping) on the `cpu-small` preset, plus any `key=value` overrides given, with the trainer's
  schedule by the clock (`psyduck train --minutes`): warmup, then cosine or wsd over the fraction
  of the budget this side has spent, so the rate reaches min_lr as the budget ends.
- variants (`--variant NAME:key=value,key=value`, repeatable; `preset=NAME` picks another base
  preset): more PsyDuck sides in the same race, one lever changed each, for the lever table.
- nanogpt: the peer. nanoGPT's model and the CPU recipe of nanoGPT's README, rewritten here from
  that description (benchmarks/baselines/nanogpt_recipe.py: 4 layers, 4 heads, width 128, context
  64, batch 12, AdamW 1e-3 cosine to 1e-4, warm-up 100 steps, beta2 0.99, weight decay 0.1 on 2-D
  weights, clipping 1.0; 1.8M parameters) on its own byte-level BPE-8192 of the same corpus.
  nanoGPT's README runs the cosine over a fixed 2,000 iterations; HERE it runs over the time
  budget exactly as cpu-small's does (progress = the fraction of the budget spent), so neither
  side is judged with an unfinished or an early-finished schedule.

Targets (issue 21; in the JSON as `peer_targets` when cpu-small and nanogpt both run):
cpu-small's bits per byte at least 5% below the nanoGPT side's at 2 and 5 minutes and 10% below
at 10 minutes (percent below = (nanogpt - cpu-small) / nanogpt), and cpu-small reaching the
nanoGPT side's final value within 4 minutes. Times past a shorter budget read null.

All train on the embedded corpus (wiki-vital), prepared into data/bench-cl100k and
data/bench-bpe<N>. Method:
- the sides take turns (whichever has used less of its own training time steps next), so load
  from other processes falls on all alike; each side's clock counts only its own training steps,
  never evaluation;
- evaluation: the first documents of the validation split (the same documents for every
  tokenizer: the split is per document and does not depend on the tokenizer), at least
  `--eval-bytes` UTF-8 bytes of them, every token predicted once from non-overlapping windows;
  bits per byte = summed loss (nats) / ln 2 / the UTF-8 bytes of the predicted text. Evaluated at
  the same own-clock times on every side: densely early, then every budget/10 (and at 2 and 5
  minutes, the targets' times);
- time to target: the seed recipe's final bits per byte is the target; for each side, the first
  own-clock time its curve reaches it (linear interpolation between evaluations).
  ratio = cpu-small's time to target / the seed recipe's. final_ratio = cpu-small's final bits per
  byte / the seed recipe's.
Outputs: every side's curve (own-clock seconds, step, val bits per byte, and its training loss:
the mean of its last 20 steps, in nats per token, so overfitting shows) and final bits per byte
on stderr and in the JSON, and a PNG (`--png`, default runs/time_to_quality.png).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from baselines.nanogpt_recipe import NanoGPTRecipe  # noqa: E402
from baselines.seed_gpt import SeedGPT, seed_optimizer  # noqa: E402
from common import REPO, HeldOut, add_common_args, bench_data, data_folder, emit, machine, rounded, setup  # noqa: E402

from psyduck import hardware  # noqa: E402
from psyduck.config import get_preset  # noqa: E402


# ---------------------------------------------------------------------------------------------
# The sides
# ---------------------------------------------------------------------------------------------

class SeedRecipe:
    name = "seed recipe (seed-60m, seed-style baseline)"

    def __init__(self, device, dtype, seed: int = 1337) -> None:  # noqa: ANN001
        cfg = get_preset("seed-60m")
        self.data = bench_data(cfg.data.tokenizer)
        cfg.model.vocab_size = self.data.vocab_size
        self.cfg, self.device = cfg, device
        torch.manual_seed(seed)
        self.model = SeedGPT.from_config(cfg.model).to(device)
        self.opt = seed_optimizer(self.model, cfg.train.lr)
        self.autocast = hardware.autocast(device, dtype)
        self.gen = torch.Generator().manual_seed(seed)
        self.step = 0
        self.tokenizer = cfg.data.tokenizer

    def train_step(self) -> float:
        t = self.cfg.train
        x, y = self.data.get_batch("train", t.batch_size, self.cfg.model.block_size, self.gen)
        with self.autocast:
            _, loss = self.model(x.to(self.device), y.to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return loss.item()

    def loss_sum(self, x, y):  # noqa: ANN001
        logits, _ = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction="sum")

    def eval_mode(self, on: bool) -> None:
        self.model.train(not on)

    def set_progress(self, fraction: float) -> None:
        """A constant learning rate: nothing depends on the time spent."""


class CpuSmall:
    """PsyDuck's trainer on a preset (cpu-small unless `preset=NAME` is among the overrides)."""

    def __init__(self, device, dtype, overrides: list[str], out: Path, label: str = "") -> None:  # noqa: ANN001
        from psyduck.train import Trainer

        preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("preset=")), "cpu-small")
        overrides = [o for o in overrides if not o.startswith("preset=")]
        cfg = get_preset(preset)
        if overrides:
            cfg = cfg.replace(overrides)
        self.name = f"PsyDuck {preset}" + (f" ({label})" if label else "")
        self.data = bench_data(cfg.data.tokenizer)
        cfg.data.path = str(data_folder(cfg.data.tokenizer))
        cfg.train.device = str(device)
        cfg.train.dtype = str(dtype).replace("torch.", "")
        self.trainer = Trainer(cfg, out, progress=False, log=lambda m: None)
        self.model = self.trainer.model
        self.cfg = self.trainer.cfg
        self.device = device
        self.tokenizer = cfg.data.tokenizer
        self.overrides = overrides
        self.fraction = 0.0

    @property
    def step(self) -> int:
        return self.trainer.step

    def train_step(self) -> float:
        return self.trainer.train_step(self.fraction)

    def loss_sum(self, x, y):  # noqa: ANN001
        _, loss = self.model(x, y, loss=self.trainer.eval_loss)
        return loss * (y != -1).sum()

    def eval_mode(self, on: bool) -> None:
        self.model.train(not on)

    def set_progress(self, fraction: float) -> None:
        """The trainer's schedule by the clock (warmup, cosine or wsd over the budget), on this
        side's own clock: the learning rate reaches min_lr as the budget ends."""
        self.fraction = fraction


# ---------------------------------------------------------------------------------------------
# The race
# ---------------------------------------------------------------------------------------------

def eval_times(budget: float, quick: bool = False, evals: int = 0) -> list[float]:
    """Own-clock seconds at which to evaluate: dense in the first fifth, then every tenth, and at
    the targets' minutes (with --quick: every quarter; with `evals`: that many, evenly spaced)."""
    if quick or evals:
        n = evals or 4
        return [budget * k / n for k in range(n + 1)]
    dense = [budget * k / 50 for k in range(1, 10)]
    regular = [budget * k / 10 for k in range(1, 11)]
    targets = [m * 60.0 for m in PERCENT_BELOW_GOALS if m * 60.0 < budget]
    return sorted(set([0.0] + dense + regular + targets))


def first_time_at_or_below(curve: list[dict], target: float) -> float | None:
    for prev, cur in zip(curve, curve[1:]):
        if cur["bpb"] <= target:
            if prev["bpb"] <= target:
                return prev["time_s"]
            f = (prev["bpb"] - target) / (prev["bpb"] - cur["bpb"])
            return prev["time_s"] + f * (cur["time_s"] - prev["time_s"])
    return 0.0 if curve and curve[0]["bpb"] <= target else None


def race(sides: dict, held: dict, budget: float, device, autocast, quick: bool = False, evals: int = 0) -> dict:  # noqa: ANN001
    clock = {k: 0.0 for k in sides}
    losses = {k: [] for k in sides}
    curves = {k: [] for k in sides}
    todo = {k: eval_times(budget, quick, evals) for k in sides}

    def evaluate(k: str) -> None:
        s = sides[k]
        s.eval_mode(True)
        t0 = time.perf_counter()
        bpb = held[k].bits_per_byte(s.loss_sum, device, autocast)
        s.eval_mode(False)
        window = losses[k][-20:]
        row = {"time_s": clock[k], "step": s.step, "bpb": bpb,
               "train_loss": sum(window) / len(window) if window else None, "eval_s": time.perf_counter() - t0}
        curves[k].append(row)
        print(f"[time_to_quality] {k:10s} t={clock[k]:7.1f}s step {s.step:5d} val bpb {bpb:.4f} train loss {row['train_loss'] or float('nan'):.3f}", file=sys.stderr, flush=True)

    while True:
        for k in sides:  # an evaluation that is due (one, however many due times a long step passed)
            if todo[k] and clock[k] >= todo[k][0] - 1e-9:
                while todo[k] and clock[k] >= todo[k][0] - 1e-9:
                    todo[k].pop(0)
                evaluate(k)
        active = [k for k in sides if clock[k] < budget]
        if not active:
            break
        k = min(active, key=lambda name: clock[name])
        sides[k].set_progress(clock[k] / budget)
        hardware.sync(device)
        t0 = time.perf_counter()
        loss = sides[k].train_step()
        hardware.sync(device)
        clock[k] += time.perf_counter() - t0
        if loss is not None:
            losses[k].append(loss)
        if loss is not None and not math.isfinite(loss):
            raise SystemExit(f"{k} diverged (loss {loss}) at step {sides[k].step}")
    for k in sides:  # the final point at the end of the budget
        if not curves[k] or curves[k][-1]["step"] != sides[k].step:
            evaluate(k)
    return curves


def bpb_at(curve: list[dict], t: float) -> float | None:
    """The curve's bits per byte at own-clock time t (linear between evaluations); None past its end."""
    for prev, cur in zip(curve, curve[1:]):
        if prev["time_s"] <= t <= cur["time_s"]:
            span = cur["time_s"] - prev["time_s"]
            f = (t - prev["time_s"]) / span if span > 0 else 1.0
            return prev["bpb"] + f * (cur["bpb"] - prev["bpb"])
    return None


# Issue 21's targets: minutes -> how far below the nanoGPT side cpu-small must be (percent), and the
# most seconds cpu-small may take to reach the nanoGPT side's final value.
PERCENT_BELOW_GOALS = {2: 5.0, 5: 5.0, 10: 10.0}
TIME_TO_PEER_FINAL_GOAL_S = 240.0


def peer_targets(cpu: list[dict], nano: list[dict], budget: float) -> dict:
    """cpu-small against the nanoGPT side of the same run: percent below at 2, 5 and 10 minutes
    (null where the budget is shorter) and at the budget's end, and the time cpu-small takes to
    reach the nanoGPT side's final bits per byte, each with whether issue 21's goal is met."""
    def below(t: float) -> float | None:
        c, n = bpb_at(cpu, t), bpb_at(nano, t)
        return 100.0 * (n - c) / n if c is not None and n is not None else None

    percent = {f"{m}min": below(m * 60.0) for m in PERCENT_BELOW_GOALS}
    met = {f"{m}min": (percent[f"{m}min"] >= goal if percent[f"{m}min"] is not None else None)
           for m, goal in PERCENT_BELOW_GOALS.items()}
    reach = first_time_at_or_below(cpu, nano[-1]["bpb"])
    return {
        "percent_below_nanogpt": {**percent, "end": below(budget)},
        "goal_percent_below": {f"{m}min": g for m, g in PERCENT_BELOW_GOALS.items()},
        "met_percent_below": met,
        "nanogpt_final_bpb": nano[-1]["bpb"],
        "cpu_small_time_to_nanogpt_final_s": reach,
        "goal_time_to_nanogpt_final_s": TIME_TO_PEER_FINAL_GOAL_S,
        "met_time_to_nanogpt_final": reach is not None and reach <= TIME_TO_PEER_FINAL_GOAL_S,
    }


def plot(curves: dict, names: dict, finals: dict[str, float], path: Path, minutes: float) -> None:
    """All sides' curves, with a dashed line (in the side's colour) at each final the targets are
    measured against; `finals` maps a side key, or "target" for a --target-bpb, to the value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    colors = {}
    for k, rows in curves.items():
        (line,) = ax.plot([r["time_s"] / 60 for r in rows], [r["bpb"] for r in rows], "-o", ms=3, label=names[k])
        colors[k] = line.get_color()
    for k, value in finals.items():
        label = f"{names[k].split(' (')[0]}'s final" if k in names else "target"
        ax.axhline(value, color=colors.get(k, "grey"), ls="--", lw=1, label=f"{label}: {value:.3f}")
    ax.set_xlabel("training time (minutes, evaluation excluded)")
    ax.set_ylabel("val bits per byte")
    ax.set_title(f"Time to quality on the embedded corpus ({minutes:g} min budget)")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


SIDES = ("seed", "cpu-small", "nanogpt")


def side_list(text: str) -> list[str]:
    """--sides: a comma-separated subset of SIDES, kept in SIDES' order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SIDES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown side(s) {', '.join(unknown) or '(none)'}; choose from {','.join(SIDES)}")
    return [n for n in SIDES if n in names]


def variant(text: str) -> tuple[str, list[str]]:
    """--variant NAME:key=value,key=value -> (NAME, [key=value, ...])."""
    name, _, spec = text.partition(":")
    overrides = [o.strip() for o in spec.split(",") if o.strip()]
    if not name or any("=" not in o for o in overrides):
        raise argparse.ArgumentTypeError(f"bad --variant {text!r}; write NAME:key=value,key=value")
    return name, overrides


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per side (default 10)")
    p.add_argument("--sides", type=side_list, default=list(SIDES),
                   help=f"comma-separated sides to train (default {','.join(SIDES)})")
    p.add_argument("--only", choices=SIDES, help="train one side only (the same as --sides NAME)")
    p.add_argument("--target-bpb", type=float, help="without the seed side: the seed recipe's final bpb to race (e.g. 2.16)")
    p.add_argument("--eval-bytes", type=int, default=0, help="held-out text size (default 48,000 bytes; 16,000 with --quick)")
    p.add_argument("--evals", type=int, default=0, help="evaluations per side, evenly spaced (default: dense early, then every tenth)")
    p.add_argument("--png", default=str(REPO / "runs" / "time_to_quality.png"))
    p.add_argument("--variant", action="append", default=[], type=variant,
                   help="NAME:key=value,key=value: another PsyDuck side, cpu-small with these overrides (repeatable)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the cpu-small preset (for sweeps)")
    args = p.parse_args()
    if args.only:
        args.sides = [args.only]
    if args.quick:
        args.minutes = min(args.minutes, 0.35)
    return args


def build_sides(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, run_dir: Path) -> dict:
    """The sides named by --sides, in SIDES' order; with --compile, each model compiled (cpu-small
    through its own config, train.compile; the others by wrapping the module they train)."""
    sides: dict = {}
    if "seed" in args.sides:
        sides["seed"] = SeedRecipe(device, dtype)
    extra = ["train.compile=true"] if args.compile else []
    if "cpu-small" in args.sides:
        sides["cpu-small"] = CpuSmall(device, dtype, args.overrides + extra, run_dir / "cpu-small")
    for name, overrides in args.variant:
        sides[f"cpu-small:{name}"] = CpuSmall(device, dtype, args.overrides + overrides + extra, run_dir / name, name)
    if "nanogpt" in args.sides:
        sides["nanogpt"] = NanoGPTRecipe(bench_data(NanoGPTRecipe.tokenizer), device, hardware.autocast(device, dtype))
    if args.compile:
        for k in ("seed", "nanogpt"):
            if k in sides:
                sides[k].model = torch.compile(sides[k].model)
    return sides


def tokens_per_step(side: SeedRecipe | CpuSmall | NanoGPTRecipe) -> int:
    """Tokens one optimizer step of the side trains on."""
    if isinstance(side, CpuSmall):
        return side.trainer.tokens_per_step
    return side.cfg.train.batch_size * side.cfg.model.block_size


def side_summary(side: SeedRecipe | CpuSmall | NanoGPTRecipe, rows: list[dict], target: float | None) -> dict:
    """One side's figures for the JSON: size, steps, final and best bits per byte, time to target, curve."""
    return {
        "name": side.name,
        "tokenizer": side.tokenizer,
        "params": sum(p.numel() for p in side.model.parameters()),
        "steps": side.step,
        "train_tokens_per_s": side.step * tokens_per_step(side) / rows[-1]["time_s"] if rows[-1]["time_s"] else None,
        "final_bpb": rows[-1]["bpb"],
        "best_bpb": min(r["bpb"] for r in rows),
        "time_to_target_s": first_time_at_or_below(rows, target) if target is not None else None,
        "curve_columns": ["time_s", "step", "val_bpb", "train_loss_nats"],  # train: the mean of the last 20 steps
        "curve": [[round(r["time_s"], 1), r["step"], r["bpb"], rounded(r["train_loss"])] for r in rows],
    }


def main() -> None:
    args = parse_args()
    device, dtype = setup(args)
    autocast = hardware.autocast(device, dtype)
    budget = args.minutes * 60
    eval_bytes = args.eval_bytes or (16_000 if args.quick else 48_000)

    with tempfile.TemporaryDirectory(prefix="psyduck-ttq-") as tmp:
        sides = build_sides(args, device, dtype, Path(tmp) / "run")
        held = {k: HeldOut(s.data, eval_bytes, s.cfg.model.block_size, 8) for k, s in sides.items()}
        if len({h.text_sha for h in held.values()}) != 1 or len({h.bytes for h in held.values()}) != 1:
            raise SystemExit("the sides' held-out documents differ; prepare every data folder from the same source")
        curves = race(sides, held, budget, device, autocast, args.quick, args.evals)

    target = curves["seed"][-1]["bpb"] if "seed" in curves else args.target_bpb
    summary = {k: side_summary(sides[k], rows, target) for k, rows in curves.items()}
    for k, side in sides.items():
        if isinstance(side, CpuSmall):
            summary[k]["config"] = {"model": vars(side.cfg.model), "train": vars(side.cfg.train), "overrides": side.overrides}
    finals = {k: curves[k][-1]["bpb"] for k in ("seed", "nanogpt") if k in curves}
    if "seed" not in curves and target is not None:
        finals["target"] = target
    plot(curves, {k: s.name for k, s in sides.items()}, finals, Path(args.png), args.minutes)
    out = {
        "benchmark": "time_to_quality",
        "machine": machine(device),
        "precision": str(dtype).replace("torch.", ""),
        "minutes_per_side": args.minutes,
        "sides": list(sides),
        "held_out": {"documents": next(iter(held.values())).documents, "bytes": next(iter(held.values())).bytes,
                     "tokens": {k: h.tokens for k, h in held.items()}},
        "target_bpb": target,
        **summary,
        "png": args.png,
    }
    if "cpu-small" in summary and target is not None:
        tc = summary["cpu-small"]["time_to_target_s"]
        ts = summary["seed"]["time_to_target_s"] if "seed" in summary else budget  # else: a seed that needs the whole budget
        out["ratio"] = tc / ts if tc is not None and ts else None
        out["final_ratio"] = summary["cpu-small"]["final_bpb"] / target
    if "nanogpt" in curves:
        for k in curves:
            if k.startswith("cpu-small"):
                key = "peer_targets" + k[len("cpu-small"):]
                out[key] = peer_targets(curves[k], curves["nanogpt"], budget)
    emit(rounded(out))


if __name__ == "__main__":
    main()
