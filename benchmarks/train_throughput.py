"""Training throughput: the seed-style baseline vs PsyDuck, same process, same batches, same precision.

    python benchmarks/train_throughput.py                      # seed-60m and cpu-small, with lever ablations
    python benchmarks/train_throughput.py --quick              # smoke run, under two minutes (fewer steps;
                                                               # memory for the first preset only)
    python benchmarks/train_throughput.py --preset seed-60m --steps 8
    python benchmarks/train_throughput.py --device cuda --compile --preset gpt2-124m --vocab-size 50304 \
        --lever fused_loss                                     # on a GPU (bf16 autocast), GPT-2 small's shape
    python benchmarks/train_throughput.py --device cuda --compile --compile-mode max-autotune-no-cudagraphs \
        --no-baseline --preset gpt2-124m --vocab-size 50304 --batch-size 32   # a sweep of PsyDuck's settings alone

For each preset, both sides are built at the preset's shape (vocab, context, width, depth, heads,
dropout, batch): the baseline is benchmarks/baselines/seed_gpt.py with the seed's plain AdamW;
PsyDuck is `psyduck.model.GPT` with the preset's architecture, `psyduck.train.make_optimizer` (fused
AdamW) and the loss `train.loss=auto` picks (fused linear cross-entropy on CPUs, compiled full logits
on GPUs: psyduck.losses.make_loss), stepped by the trainer's own `psyduck.train.train_step`
(lr schedule, gradient clipping when the preset asks for it, the NaN guard), one micro-batch a step.

Method:
- timing: after warm-up steps (which also allocate AdamW's state), single steps alternate
  baseline, PsyDuck, baseline, ... so that load from other processes hits both sides alike;
  tokens/s = tokens per step / median step time; ratio = PsyDuck tokens/s over the baseline's;
  `ratio_rounds`: the ratio of each turn (baseline step / the PsyDuck step after it), min, median
  and max, to show how much one run's ratio can move; `page_faults_per_step` (minor faults, CPU):
  memory the kernel had to map and zero during a step (large blocks that torch freed go back to the
  kernel and are mapped again);
- MFU = tokens/s x FLOPs per token / peak. FLOPs per token: `psyduck.hardware.flops_per_token`
  (6 x matmul parameters, output layer included, + 12 * n_layer * T * d_model for attention), the
  same model FLOPs for both sides. Peak: the best square fp32 matmul (1024, 2048) measured in this
  process, before and after the timing (a datasheet figure on known GPUs, if higher);
- peak memory (CPU): each side trains alone in a fresh subprocess; we report its peak resident set
  (VmHWM from /proc/self/status, which sees every allocation torch makes, unlike tracemalloc)
  and that peak minus the resident set just before the model was built (the training footprint:
  weights, gradients, AdamW state, activations, logits). memory ratio = PsyDuck's footprint over the
  baseline's. On CUDA: `torch.cuda.max_memory_allocated` in this process, per side;
- levers (`--levers`, on by default in full runs): PsyDuck with one lever undone at a time, each
  timed alternating with the full PsyDuck step: the other loss (plain_loss, full logits +
  F.cross_entropy, on a CPU; fused_loss on a GPU), default AdamW, teaching attention (per-head
  explicit mask), and the token embedding frozen (an upper bound on what skipping untouched
  embedding rows could save).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from baselines.seed_gpt import SeedGPT, seed_optimizer  # noqa: E402
from common import (  # noqa: E402
    Timer, add_common_args, bench_data, compile_mode, emit, machine, measured_peak, median, rounded, setup,
)

from psyduck import hardware  # noqa: E402
from psyduck.config import get_preset  # noqa: E402
from psyduck.losses import FusedLoss, make_loss  # noqa: E402
from psyduck.model import GPT  # noqa: E402
from psyduck.train import StepSetup, lr_at, make_optimizer, train_step  # noqa: E402


def preset_config(name: str, batch_size: int | None = None, vocab_size: int | None = None):  # noqa: ANN201
    cfg = get_preset(name)
    data = bench_data(cfg.data.tokenizer)
    cfg.model.vocab_size = vocab_size or data.vocab_size
    if batch_size:
        cfg.train.batch_size = batch_size
    return cfg, data


def batches(cfg, data, n: int, device) -> list:  # noqa: ANN001
    """`n` training batches of real text; with --vocab-size smaller than the tokenizer's, ids are
    folded into range (id % vocab_size): the timing depends on the shape, not on which ids."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(n):
        x, y = data.get_batch("train", cfg.train.batch_size, cfg.model.block_size, g)
        if cfg.model.vocab_size < data.vocab_size:
            x, y = x % cfg.model.vocab_size, y % cfg.model.vocab_size
        out.append((x.to(device), y.to(device)))
    return out


class Side:
    """One model + optimizer + the function that takes one training step."""

    def __init__(self, name: str, model, optimizer, step_fn) -> None:  # noqa: ANN001
        self.name, self.model, self.optimizer, self.step_fn = name, model, optimizer, step_fn
        self.steps = 0
        self.faults: list[int] = []  # minor page faults of each timed step (memory the kernel maps fresh)

    def step(self, x, y) -> float:  # noqa: ANN001
        loss = self.step_fn(self, x, y)
        self.steps += 1
        return loss


def baseline_side(cfg, device, dtype, mode: str | None) -> Side:  # noqa: ANN001
    torch.manual_seed(0)
    model = SeedGPT.from_config(cfg.model).to(device)
    opt = seed_optimizer(model, cfg.train.lr)
    net = torch.compile(model, mode=mode) if mode else model
    ac = hardware.autocast(device, dtype)

    def step(side: Side, x, y) -> float:  # noqa: ANN001
        with ac:
            _, loss = net(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return Side("baseline", model, opt, step)


def psyduck_side(cfg, device, dtype, mode: str | None, *, loss: str = "auto", default_adamw: bool = False,
                 teaching: bool = False, frozen_embedding: bool = False,
                 model: GPT | None = None) -> Side:  # noqa: ANN001
    t = cfg.train
    if model is None:
        torch.manual_seed(0)
        model = GPT(cfg.model).to(device)
    if teaching:  # the same weights in a model built with the teaching attention (one head at a time)
        taught = GPT(dataclasses.replace(model.config, attention="teaching")).to(device)
        taught.load_state_dict(model.state_dict())
        model = taught
    if frozen_embedding:
        model.tok_emb.weight.requires_grad_(False)
    opt = make_optimizer(model, t, device, fused=not default_adamw)
    setup = StepSetup(
        net=torch.compile(model, mode=mode) if mode else model, model=model, optimizer=opt, train=t,
        autocast=hardware.autocast(device, dtype),
        loss=make_loss(loss, device),  # as the Trainer decides (train.loss)
    )

    def step(side: Side, x, y) -> float:  # noqa: ANN001
        return train_step(setup, x, y, lr_at(side.steps, t))

    return Side("psyduck", model, opt, step)


def alternate(sides: list[Side], data: list, device, warmup: int, steps: int) -> dict[str, list[float]]:  # noqa: ANN001
    """Warm up each side, then time single steps in turn; returns step seconds per side."""
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    i = 0
    for s in sides:
        for _ in range(warmup):
            s.step(*data[i % len(data)])
            i += 1
    for k in range(steps):
        for s in sides:
            x, y = data[(k + steps) % len(data)]
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            with Timer(device) as tm:
                s.step(x, y)
            s.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
            times[s.name].append(tm.seconds)
    return times


def rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc, in MiB. (ru_maxrss would do for the
    peak, but Linux carries it over from the parent across fork + exec, so a child started by a
    process that already ran the baseline would report the parent's peak.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB on Linux, bytes on macOS


def memory_child(side: str, preset: str, steps: int, batch_size: int | None) -> None:
    """Subprocess entry: train one side alone for `steps` steps and print its peak RSS."""
    cfg, data = preset_config(preset, batch_size)
    device, dtype = torch.device("cpu"), torch.float32
    b = batches(cfg, data, steps, device)
    before = rss_mib("VmRSS")
    s = baseline_side(cfg, device, dtype, False) if side == "baseline" else psyduck_side(cfg, device, dtype, False)
    for x, y in b:
        s.step(x, y)
    peak = rss_mib("VmHWM")
    print(json.dumps({"before_mib": before, "peak_rss_mib": peak, "train_mib": peak - before}))


def measure_memory_cpu(preset: str, steps: int, batch_size: int | None) -> dict:
    out = {}
    for side in ("baseline", "psyduck"):
        cmd = [sys.executable, __file__, "--memory-child", side, "--preset", preset, "--steps", str(steps)]
        if batch_size:
            cmd += ["--batch-size", str(batch_size)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[side] = json.loads(r.stdout.strip().splitlines()[-1])
    return {
        "method": f"peak RSS (VmHWM) of a fresh process training one side for {steps} steps; "
                  "train_mib = that peak minus the RSS just before the model was built",
        "baseline_peak_rss_mib": out["baseline"]["peak_rss_mib"],
        "psyduck_peak_rss_mib": out["psyduck"]["peak_rss_mib"],
        "baseline_train_mib": out["baseline"]["train_mib"],
        "psyduck_train_mib": out["psyduck"]["train_mib"],
        "ratio": out["psyduck"]["train_mib"] / out["baseline"]["train_mib"],
        "ratio_total_rss": out["psyduck"]["peak_rss_mib"] / out["baseline"]["peak_rss_mib"],
    }


def measure_memory_cuda(cfg, data, device, dtype, mode: str | None) -> dict:  # noqa: ANN001
    out = {}
    b = batches(cfg, data, 2, device)
    for name, make in (("baseline", baseline_side), ("psyduck", psyduck_side)):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        s = make(cfg, device, dtype, mode)
        for x, y in b:
            s.step(x, y)
        out[name] = torch.cuda.max_memory_allocated(device) / 2**20
        del s
    return {"method": "torch.cuda.max_memory_allocated per side", "baseline_train_mib": out["baseline"],
            "psyduck_train_mib": out["psyduck"], "ratio": out["psyduck"] / out["baseline"]}


def run_preset(name: str, args, device, dtype, first: bool = True) -> dict:  # noqa: ANN001
    cfg, data = preset_config(name, args.batch_size, args.vocab_size)
    steps = args.steps or ((2 if name == "seed-60m" else 3) if args.quick else 8)
    warmup = 1 if args.quick else 2
    b = batches(cfg, data, 4, device)
    mode = compile_mode(args)
    psy = psyduck_side(cfg, device, dtype, mode)
    sides = [psy] if args.no_baseline else [baseline_side(cfg, device, dtype, mode), psy]
    peak = measured_peak(device, dtype)
    times = alternate(sides, b, device, warmup, steps)
    peak = max(peak, measured_peak(device, dtype))
    tokens = cfg.train.batch_size * cfg.model.block_size
    fpt = hardware.flops_per_token(psy.model)
    res: dict = {"shape": {k: getattr(cfg.model, k) for k in ("vocab_size", "block_size", "d_model", "n_layer", "n_head")},
                 "batch_size": cfg.train.batch_size, "tokens_per_step": tokens, "params_psyduck": psy.model.num_params(),
                 "flops_per_token": fpt, "peak_flops": peak, "steps_timed": steps}
    for s in sides:
        sec = median(times[s.name])
        res[s.name] = {"step_s": sec, "step_s_all": times[s.name], "tokens_per_s": tokens / sec,
                       "mfu": tokens / sec * fpt / peak, "page_faults_per_step": median(s.faults)}
    if not args.no_baseline:
        res["params_baseline"] = sum(p.numel() for p in sides[0].model.parameters())
        res["ratio"] = res["psyduck"]["tokens_per_s"] / res["baseline"]["tokens_per_s"]
        rounds = sorted(b / p for b, p in zip(times["baseline"], times["psyduck"]))  # one per turn taken
        res["ratio_rounds"] = {"min": rounds[0], "median": median(rounds), "max": rounds[-1]}
    del sides
    print(json.dumps(rounded({"timing": res})), file=sys.stderr, flush=True)
    if args.levers:
        levers = {}
        other_loss = "plain_loss" if isinstance(make_loss("auto", device), FusedLoss) else "fused_loss"
        variants = {
            other_loss: dict(loss=other_loss.split("_")[0]),  # plain: full logits + F.cross_entropy
            "default_adamw": dict(default_adamw=True),
            "teaching_attention": dict(teaching=True),
        }
        if not cfg.model.tie_embeddings:
            variants["frozen_embedding"] = dict(frozen_embedding=True)
        if args.lever:
            variants = {k: v for k, v in variants.items() if k in args.lever}
        for lever, kw in variants.items():
            model = copy.deepcopy(psy.model)
            other = psyduck_side(cfg, device, dtype, mode, model=model, **kw)
            other.name = lever
            t = alternate([psy, other], b, device, 1, max(2, steps // 2))
            levers[lever] = {"step_s": median(t[lever]), "psyduck_step_s": median(t["psyduck"]),
                             "slowdown": median(t[lever]) / median(t["psyduck"])}
            print(json.dumps(rounded({lever: levers[lever]})), file=sys.stderr, flush=True)
            del other, model
        res["levers"] = levers
    if not args.no_memory and not args.no_baseline and not (args.quick and not first):  # --quick: memory for the first preset only
        if device.type == "cuda":
            res["memory"] = measure_memory_cuda(cfg, data, device, dtype, mode)
        else:
            res["memory"] = measure_memory_cpu(name, 2, args.batch_size)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--preset", action="append", help="preset(s) to measure (default: seed-60m and cpu-small)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per side (default 8; 2-3 with --quick)")
    p.add_argument("--batch-size", type=int, default=0, help="override the preset's batch size")
    p.add_argument("--levers", action=argparse.BooleanOptionalAction, default=None,
                   help="time each lever undone (default: on, off with --quick)")
    p.add_argument("--lever", action="append", choices=["plain_loss", "fused_loss", "default_adamw", "teaching_attention", "frozen_embedding"],
                   help="time only these levers (repeatable; implies --levers)")
    p.add_argument("--vocab-size", type=int, default=0,
                   help="model vocabulary instead of the tokenizer's (ids folded in range), e.g. 50304 for GPT-2's shape")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-baseline", action="store_true",
                   help="time PsyDuck alone (sweeps of PsyDuck's own settings; no ratio, no memory comparison)")
    p.add_argument("--memory-child", choices=["baseline", "psyduck"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.preset[0], args.steps, args.batch_size or None)
        return
    if args.levers is None:
        args.levers = bool(args.lever) or not args.quick
    device, dtype = setup(args)
    presets = args.preset or ["seed-60m", "cpu-small"]
    results = {}
    for name in presets:
        print(f"[train_throughput] {name}...", file=sys.stderr, flush=True)
        results[name] = run_preset(name, args, device, dtype, first=name == presets[0])
        print(json.dumps(rounded({name: {k: v for k, v in results[name].items()}})), file=sys.stderr, flush=True)
    head = results[presets[0]]
    out = {
        "benchmark": "train_throughput",
        "machine": machine(device),
        "precision": str(dtype).replace("torch.", ""),
        "compile": compile_mode(args),
        "results": results,
        "ratio": head.get("ratio"),
        "memory_ratio": head.get("memory", {}).get("ratio"),
        "mfu": {n: r["psyduck"]["mfu"] for n, r in results.items()},
    }
    emit(rounded(out))


if __name__ == "__main__":
    main()
