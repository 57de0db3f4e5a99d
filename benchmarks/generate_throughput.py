"""Generation throughput: the seed's generate vs PsyDuck's KV-cache generate, same weights.

    python benchmarks/generate_throughput.py            # seed-60m, prompt "The world", 256 new tokens, 3 repeats
    python benchmarks/generate_throughput.py --quick    # 1 repeat (under two minutes)
    python benchmarks/generate_throughput.py --device cuda

Both sides hold the *same* weights: a randomly initialised `psyduck.model.GPT` at the seed-60m
shape is copied into the seed-style baseline (benchmarks/baselines/seed_gpt.py: per-head q/k/v,
untied output layer, sinusoidal positions), and the benchmark checks that the two give the same
logits for the prompt before timing anything.

- baseline: the seed's `generate`, which for every new token crops the context to the last
  block_size tokens and runs the whole window through the model (logits for every position,
  keep the last), then samples with `torch.multinomial`;
- PsyDuck: `psyduck.generate.stream` (prompt run once, then one token at a time through a KV cache;
  when the 128-token window is full, the newest half is kept and the cache rebuilt), sampling at
  temperature 1 (the same distribution as the seed's). Two PsyDuck sides: the default (on CPUs,
  float16 weight copies for the matrix products: psyduck/generate/decode_weights.py, with its
  tolerance test) and `exact=True` (float32 throughout); `ratio` is the default's, `exact_ratio`
  the other's. Each side's `DecodeWeights` is built once, before the clock, as a server builds
  them once for all its requests (`psyduck generate` builds them once per call);
- batch 1, prompt "The world" (cl100k_base), 256 new tokens, float32 weights on both sides, no
  autocast (as `psyduck generate` runs; on a GPU at batch 1, bf16 autocast re-casts every weight
  for every token and is 2.3x slower than float32 on an H100), no gradients on either side. The
  sides take turns token by token (so load from other processes hits all alike); each side's clock counts only its own tokens. Time to first token = from the
  call to the first sampled token. tokens/s = new tokens / total time. ratio = PsyDuck tokens/s
  over the baseline's; the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from baselines.seed_gpt import SeedGPT  # noqa: E402
from common import add_common_args, emit, machine, median, rounded, setup  # noqa: E402

from psyduck import hardware  # noqa: E402
from psyduck.config import get_preset  # noqa: E402
from psyduck.generate import DecodeWeights, GenerationParams, stream  # noqa: E402
from psyduck.model import GPT  # noqa: E402
from psyduck.tokenizer import make_tokenizer  # noqa: E402


@torch.no_grad()
def copy_weights(src: GPT, dst: SeedGPT) -> None:
    """PsyDuck's weights into the seed-style model (q, k, v biases must be zero: the seed has none)."""
    cfg = src.config
    hs = cfg.head_size
    dst.token_embedding.weight.copy_(src.tok_emb.weight)
    for blk, sblk in zip(src.blocks, dst.blocks):
        w = blk.attn.qkv.weight  # rows: all q heads, all k heads, all v heads
        if blk.attn.qkv.bias is not None:
            blk.attn.qkv.bias.zero_()
        for h, head in enumerate(sblk.mha.heads):
            head.Wq.weight.copy_(w[h * hs : (h + 1) * hs])
            head.Wk.weight.copy_(w[cfg.d_model + h * hs : cfg.d_model + (h + 1) * hs])
            head.Wv.weight.copy_(w[2 * cfg.d_model + h * hs : 2 * cfg.d_model + (h + 1) * hs])
        sblk.mha.projection.load_state_dict(blk.attn.proj.state_dict())
        sblk.ln1.load_state_dict(blk.norm1.state_dict())
        sblk.ln2.load_state_dict(blk.norm2.state_dict())
        sblk.ffn.ffn[0].load_state_dict(blk.ffn.up.state_dict())
        sblk.ffn.ffn[2].load_state_dict(blk.ffn.down.state_dict())
    dst.blocks[-1].load_state_dict(src.norm.state_dict())
    dst.out.load_state_dict(src.lm_head.state_dict())


def race(
    base: SeedGPT, psy: GPT, weights: dict[str, DecodeWeights], idx: torch.Tensor, n: int, device, seed: int  # noqa: ANN001
) -> dict[str, tuple[float, float]]:
    """The sides generate n tokens, one token each in turn, so that load from other processes falls
    on all alike. Returns {side: (time to first token, total seconds)}.

    The baseline is the seed's `generate`, called for one token at a time on its growing sequence:
    the same work as one `generate(idx, n)` call (it re-runs the cropped window for every token).
    PsyDuck is one `stream` call per side (default, and exact=True), over that side's prebuilt
    decode weights; each token is fetched to the host (`.item()`), as a caller printing it would.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    seq = idx
    streams = {side: stream(psy, idx, GenerationParams(n, temperature=1.0, seed=seed, exact=w.exact), weights=w)
               for side, w in weights.items()}
    spent: dict[str, list[float]] = {"baseline": [], **{k: [] for k in streams}}
    with torch.no_grad():
        for _ in range(n):
            hardware.sync(device)
            t0 = time.perf_counter()
            seq = base.generate(seq, 1, generator=g)
            hardware.sync(device)
            spent["baseline"].append(time.perf_counter() - t0)
            for name, steps in streams.items():
                t0 = time.perf_counter()
                next(steps).item()
                spent[name].append(time.perf_counter() - t0)
    assert seq.shape[1] == idx.shape[1] + n
    return {k: (v[0], sum(v)) for k, v in spent.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--preset", default="seed-60m")
    p.add_argument("--prompt", default="The world")
    p.add_argument("--tokens", type=int, default=256, help="new tokens per generation")
    p.add_argument("--repeats", type=int, default=0, help="generations per side (default 3; 1 with --quick)")
    args = p.parse_args()
    if args.dtype == "auto":  # generation runs as `psyduck generate` runs it: the weights' float32, no autocast
        args.dtype = "float32"
    device, dtype = setup(args)
    cfg = get_preset(args.preset)
    tok = make_tokenizer(cfg.data.tokenizer) if cfg.data.tokenizer == "cl100k_base" else None
    if tok is None:
        from common import bench_data

        tok = bench_data(cfg.data.tokenizer).tokenizer()
    cfg.model.vocab_size = tok.vocab_size
    cfg.model.dropout = 0.0
    torch.manual_seed(0)
    psy = GPT(cfg.model).to(device).eval()
    base = SeedGPT.from_config(cfg.model).to(device).eval()
    copy_weights(psy, base)
    idx = torch.tensor([tok.encode(args.prompt)], device=device)
    ac = hardware.autocast(device, dtype)
    with torch.no_grad(), ac:
        a = psy(idx)[0][:, -1].float()
        b = base(idx)[0][:, -1].float()
    same = float((a - b).abs().max())
    if same > (1e-3 if dtype == torch.float32 and device.type == "cpu" else 5e-2):  # TF32, autocast: rounded per layout
        raise SystemExit(f"the two models disagree on the prompt's logits (max |diff| {same}); weight copy is wrong")
    weights = {"psyduck": DecodeWeights.build(psy), "psyduck_exact": DecodeWeights.build(psy, exact=True)}
    if args.compile:
        base.forward = torch.compile(base.forward)
        weights = {k: dataclasses.replace(w, net=torch.compile(w.net, dynamic=True)) for k, w in weights.items()}
    repeats = args.repeats or (1 if args.quick else 3)
    # warm-up: a few tokens each
    with ac:
        race(base, psy, weights, idx, 4, device, 0)
        runs: dict[str, list[tuple[float, float]]] = {"baseline": [], "psyduck": [], "psyduck_exact": []}
        for r in range(repeats):
            for side, v in race(base, psy, weights, idx, args.tokens, device, r).items():
                runs[side].append(v)
            print(f"[generate_throughput] repeat {r}: {runs}", file=sys.stderr, flush=True)
    res: dict = {}
    for side, rs in runs.items():
        total = median([t for _, t in rs])
        res[side] = {"tokens_per_s": args.tokens / total, "time_to_first_token_s": median([f for f, _ in rs]),
                     "total_s": total, "runs_total_s": [t for _, t in rs]}
    out = {
        "benchmark": "generate_throughput",
        "machine": machine(device),
        "precision": str(dtype).replace("torch.", ""),
        "preset": args.preset,
        "prompt": args.prompt,
        "prompt_tokens": idx.shape[1],
        "new_tokens": args.tokens,
        "prompt_logits_max_abs_diff": same,
        **res,
        "ratio": res["psyduck"]["tokens_per_s"] / res["baseline"]["tokens_per_s"],
        "exact_ratio": res["psyduck_exact"]["tokens_per_s"] / res["baseline"]["tokens_per_s"],
        "ttft_ratio": res["baseline"]["time_to_first_token_s"] / res["psyduck"]["time_to_first_token_s"],
    }
    emit(rounded(out))


if __name__ == "__main__":
    main()
