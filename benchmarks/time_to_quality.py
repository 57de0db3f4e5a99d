"""Time to quality: the seed recipe vs PsyDuck's `cpu-small`, same wall-clock budget, same held-out text.

    python benchmarks/time_to_quality.py                  # 10 minutes of training per side (about 25 min in all)
    python benchmarks/time_to_quality.py --minutes 3      # shorter budgets (used for the cpu-small sweep)
    python benchmarks/time_to_quality.py --quick          # smoke run, under two minutes
    python benchmarks/time_to_quality.py --only cpu-small --target-bpb 2.16 --minutes 2 lr=3e-3 n_layer=4
    python benchmarks/time_to_quality.py --device cuda

The two sides:
- seed recipe: the seed-style baseline model (benchmarks/baselines/seed_gpt.py) at `seed-60m`
  (cl100k_base, d 256, 12 blocks, context 128, dropout 0.1), trained the seed's way: batch 16,
  AdamW default constructor at a constant 3e-4, full logits + cross-entropy. (The faithful choice;
  PsyDuck's own trainer would run the same recipe about twice as fast, see train_throughput.py.)
- cpu-small: PsyDuck's `Trainer` (its real `train_step`: fused AdamW, fused output layer + loss,
  cosine schedule, clipping) on the `cpu-small` preset, plus any `key=value` overrides given.
  The cosine schedule is defined over max_iters, so before each step after warm-up the benchmark
  sets max_iters such that the schedule's progress equals the fraction of the time budget spent
  (the learning rate reaches min_lr when the budget ends, whatever the step time turns out to be).

Both train on the embedded corpus (wiki-vital), prepared into data/bench-cl100k and
data/bench-bpe<N>. Method:
- the sides take turns (whichever has used less of its own training time steps next), so load
  from other processes falls on both alike; each side's clock counts only its own training steps,
  never evaluation;
- evaluation: the first documents of the validation split (the same documents for both
  tokenizers: the split is per document and does not depend on the tokenizer), at least
  `--eval-bytes` UTF-8 bytes of them, every token predicted once from non-overlapping windows;
  bits per byte = summed loss (nats) / ln 2 / the UTF-8 bytes of the predicted text. Evaluated at
  the same own-clock times on both sides: densely early, then every budget/10;
- time to target: the seed recipe's final bits per byte is the target; for each side, the first
  own-clock time its curve reaches it (linear interpolation between evaluations).
  ratio = cpu-small's time to target / the seed recipe's. final_ratio = cpu-small's final bits per
  byte / the seed recipe's.
Outputs: both curves on stderr and in the JSON, and a PNG (`--png`, default runs/time_to_quality.png).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from baselines.seed_gpt import SeedGPT, seed_optimizer  # noqa: E402
from common import REPO, add_common_args, bench_data, data_folder, emit, machine, rounded, setup  # noqa: E402

from psyduck import hardware  # noqa: E402
from psyduck.config import get_preset  # noqa: E402
from psyduck.data.loader import TokenData  # noqa: E402


# ---------------------------------------------------------------------------------------------
# The held-out text
# ---------------------------------------------------------------------------------------------

class HeldOut:
    """The first documents of the val split, as windows, and their UTF-8 byte count."""

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


# ---------------------------------------------------------------------------------------------
# The two runners
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


class CpuSmall:
    name = "PsyDuck cpu-small"

    def __init__(self, device, dtype, overrides: list[str], out: Path) -> None:  # noqa: ANN001
        from psyduck.train import Trainer

        cfg = get_preset("cpu-small")
        if overrides:
            cfg = cfg.replace(overrides)
        self.data = bench_data(cfg.data.tokenizer)
        cfg.data.path = str(data_folder(cfg.data.tokenizer))
        cfg.train.device = str(device)
        cfg.train.dtype = str(dtype).replace("torch.", "")
        self.trainer = Trainer(cfg, out, progress=False, log=lambda m: None)
        self.model = self.trainer.model
        self.cfg = self.trainer.cfg
        self.device = device
        self.tokenizer = cfg.data.tokenizer

    @property
    def step(self) -> int:
        return self.trainer.step

    def train_step(self) -> float:
        return self.trainer.train_step()

    def loss_sum(self, x, y):  # noqa: ANN001
        _, loss = self.model(x, y, loss=self.trainer.eval_loss)
        return loss * (y != -1).sum()

    def eval_mode(self, on: bool) -> None:
        self.model.train(not on)


# ---------------------------------------------------------------------------------------------
# The race
# ---------------------------------------------------------------------------------------------

def eval_times(budget: float, quick: bool = False) -> list[float]:
    """Own-clock seconds at which to evaluate: dense in the first fifth, then every tenth
    (with --quick: every quarter)."""
    if quick:
        return [budget * k / 4 for k in range(5)]
    dense = [budget * k / 50 for k in range(1, 10)]
    regular = [budget * k / 10 for k in range(1, 11)]
    return sorted(set([0.0] + dense + regular))


def first_time_at_or_below(curve: list[dict], target: float) -> float | None:
    for prev, cur in zip(curve, curve[1:]):
        if cur["bpb"] <= target:
            if prev["bpb"] <= target:
                return prev["time_s"]
            f = (prev["bpb"] - target) / (prev["bpb"] - cur["bpb"])
            return prev["time_s"] + f * (cur["time_s"] - prev["time_s"])
    return 0.0 if curve and curve[0]["bpb"] <= target else None


def fit_schedule(t, step: int, fraction: float) -> None:  # noqa: ANN001 - a TrainConfig
    """Set max_iters so that the cosine schedule's progress at `step` equals the fraction of the
    time budget spent: the learning rate then decays over the budget, whatever the step time."""
    if t.schedule != "cosine" or step < t.warmup_iters:
        return
    done = step - t.warmup_iters
    t.max_iters = t.warmup_iters + max(done + 1, math.ceil(done / max(fraction, 1e-9)))


def race(sides: dict, held: dict, budget: float, device, autocast, timed_schedule: str | None, quick: bool = False) -> dict:  # noqa: ANN001
    clock = {k: 0.0 for k in sides}
    losses = {k: [] for k in sides}
    curves = {k: [] for k in sides}
    todo = {k: eval_times(budget, quick) for k in sides}

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
        print(f"[time_to_quality] {k:9s} t={clock[k]:7.1f}s step {s.step:5d} val bpb {bpb:.4f}", file=sys.stderr, flush=True)

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
        if k == timed_schedule:
            fit_schedule(sides[k].cfg.train, sides[k].step, clock[k] / budget)
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


def plot(curves: dict, names: dict, target: float | None, path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for k, rows in curves.items():
        ax.plot([r["time_s"] / 60 for r in rows], [r["bpb"] for r in rows], "-o", ms=3, label=names[k])
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"seed recipe's final: {target:.3f}")
    ax.set_xlabel("training time (minutes, evaluation excluded)")
    ax.set_ylabel("val bits per byte")
    ax.set_title(f"Time to quality on the embedded corpus ({minutes:g} min budget)")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per side (default 10)")
    p.add_argument("--only", choices=["seed", "cpu-small"], help="train one side only")
    p.add_argument("--target-bpb", type=float, help="with --only cpu-small: the seed recipe's final bpb to race (e.g. 2.16)")
    p.add_argument("--eval-bytes", type=int, default=0, help="held-out text size (default 48,000 bytes; 16,000 with --quick)")
    p.add_argument("--png", default=str(REPO / "runs" / "time_to_quality.png"))
    p.add_argument("overrides", nargs="*", help="key=value overrides of the cpu-small preset (for sweeps)")
    args = p.parse_args()
    if args.quick:
        args.minutes = min(args.minutes, 0.35)
    device, dtype = setup(args)
    autocast = hardware.autocast(device, dtype)
    budget = args.minutes * 60
    eval_bytes = args.eval_bytes or (16_000 if args.quick else 48_000)

    with tempfile.TemporaryDirectory(prefix="psyduck-ttq-") as tmp:
        sides, names = {}, {}
        if args.only != "cpu-small":
            sides["seed"] = SeedRecipe(device, dtype)
        if args.only != "seed":
            extra = ["train.compile=true"] if args.compile else []
            sides["cpu-small"] = CpuSmall(device, dtype, args.overrides + extra, Path(tmp) / "run")
        for k, s in sides.items():
            names[k] = s.name
        held = {k: HeldOut(s.data, eval_bytes, s.cfg.model.block_size, 8) for k, s in sides.items()}
        if len({h.text_sha for h in held.values()}) != 1 or len({h.bytes for h in held.values()}) != 1:
            raise SystemExit("the two sides' held-out documents differ; prepare both data folders from the same source")
        if args.compile and "seed" in sides:  # cpu-small compiles through its own config (train.compile)
            sides["seed"].model.forward = torch.compile(sides["seed"].model.forward)
        curves = race(sides, held, budget, device, autocast, "cpu-small" if "cpu-small" in sides else None, args.quick)

    target = curves["seed"][-1]["bpb"] if "seed" in curves else args.target_bpb
    summary: dict = {}
    for k, rows in curves.items():
        s = sides[k]
        summary[k] = {
            "name": names[k],
            "tokenizer": s.tokenizer,
            "params": sum(p.numel() for p in s.model.parameters()),
            "steps": s.step,
            "final_bpb": rows[-1]["bpb"],
            "best_bpb": min(r["bpb"] for r in rows),
            "time_to_target_s": first_time_at_or_below(rows, target) if target is not None else None,
            "curve": [[round(r["time_s"], 1), r["step"], r["bpb"]] for r in rows],
        }
    if "cpu-small" in sides:
        summary["cpu-small"]["config"] = {"model": vars(sides["cpu-small"].cfg.model), "train": vars(sides["cpu-small"].cfg.train),
                                          "overrides": args.overrides}
    plot(curves, names, target, Path(args.png), args.minutes)
    out = {
        "benchmark": "time_to_quality",
        "machine": machine(device),
        "precision": str(dtype).replace("torch.", ""),
        "minutes_per_side": args.minutes,
        "held_out": {"documents": next(iter(held.values())).documents, "bytes": next(iter(held.values())).bytes,
                     "tokens": {k: h.tokens for k, h in held.items()}},
        "target_bpb": target,
        **summary,
        "png": args.png,
    }
    if "seed" in summary and "cpu-small" in summary:
        ts, tc = summary["seed"]["time_to_target_s"], summary["cpu-small"]["time_to_target_s"]
        out["ratio"] = tc / ts if tc is not None and ts else None
        out["final_ratio"] = summary["cpu-small"]["final_bpb"] / summary["seed"]["final_bpb"]
    elif "cpu-small" in summary and target is not None:
        tc = summary["cpu-small"]["time_to_target_s"]
        out["ratio"] = tc / budget if tc is not None else None  # against a seed recipe that needs the whole budget
        out["final_ratio"] = summary["cpu-small"]["final_bpb"] / target
    emit(rounded(out))


if __name__ == "__main__":
    main()
