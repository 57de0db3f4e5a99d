"""The named presets: complete recipes (model + data + training), each a few lines on what and why.

    from psyduck import presets
    cfg = presets["seed-60m"]          # cfg.model, cfg.data, cfg.train
    cfg = get_preset("cpu-small")      # a fresh copy to change

How each was chosen, with the measurements and the commands that reproduce them:
docs/performance.md.
"""

from __future__ import annotations

import copy

from psyduck.config import Config, DataConfig, ModelConfig, TrainConfig
from psyduck.errors import PsyDuckError


def seed_60m() -> Config:
    """The notebook PsyDuck started from, exactly: about 60.9M parameters with cl100k_base.

    d_model 256, 12 blocks, 8 heads, context 128, batch 16, AdamW lr 3e-4 (constant), dropout 0.1,
    10,000 iterations, eval every 50 over 20 batches, sinusoidal positions, pre-norm LayerNorm,
    ReLU FFN (d -> 4d -> d), untied output layer with a bias. 84% of the parameters are the two
    100,277-row embedding matrices, which is why the seed trains slowly on a CPU.
    """
    return Config(
        model=ModelConfig(
            vocab_size=100_277, block_size=128, d_model=256, n_layer=12, n_head=8, dropout=0.1,
            pos="sinusoidal", norm="layernorm", activation="relu", tie_embeddings=False, bias=True,
            head_bias=True,
        ),
        data=DataConfig(path="data/wiki-vital-cl100k", source="wiki-vital", tokenizer="cl100k_base"),
        train=TrainConfig(
            batch_size=16, max_iters=10_000, lr=3e-4, schedule="constant", weight_decay=0.0,
            beta1=0.9, beta2=0.999, grad_clip=0.0, eval_interval=50, eval_iters=20,
        ),
    )


def cpu_small() -> Config:
    """The README demo and the 10-minute CPU recipe: the best val bits per byte a 2-core CPU reaches
    in minutes, chosen lever by lever on benchmarks/time_to_quality.py (docs/performance.md).

    Small and fast wins at these budgets: a model of nanoGPT's CPU size (d 128, 4 blocks, 4 heads,
    1.7M parameters, 1.0M of them the embedding) takes ~5 steps a second, and each of the levers of
    the modern small-model recipes pays: RoPE + RMSNorm + a non-gated ReLU² FFN (3x wide, not 4x:
    6% more steps paid at every time of a 10-minute race), no biases, tied
    embeddings (exports exactly to transformers' and llama.cpp's Arcee); a BPE-8192 trained on the
    corpus; NorMuon for the blocks' matrices (Muon with each neuron's step evened out by its own
    running scale: ahead of Muon at every time of a 10-minute race), AdamW at 6e-3 for the rest;
    batch 32 x 128 (against 16: half the steps at the same tokens a second, each less noisy, ahead
    at every time of a 10-minute race, most at 4-5 minutes; 24 and 48 gained less); cosine after a
    1% warmup (a 6% one lost at every time of a 10-minute race); windows in shuffled epochs (each
    once an epoch, not at random starts: 10 minutes are ~4 epochs of the corpus, and the random
    draw sees some text 8 times and some never: -3.1% at 10 minutes, the same steps). Train it by the clock
    (`--minutes`): max_iters only draws the schedule's shape (1,500 steps: ~10 minutes here), and
    its 10 evaluations (every 150 steps' share; each ~3 s with its sample and checkpoint) count on
    the clock, so they are kept few: 20 took a fifth of a 5-minute demo.
    """
    return Config(
        model=ModelConfig(
            vocab_size=8192, block_size=128, d_model=128, n_layer=4, n_head=4, d_ff=384, dropout=0.0,
            pos="rope", norm="rmsnorm", activation="relu2", tie_embeddings=True, bias=False,
        ),
        data=DataConfig(path="data/wiki-vital", source="wiki-vital", tokenizer="bpe-8192"),
        train=TrainConfig(
            batch_size=32, max_iters=1500, lr=6e-3, min_lr=1e-4, schedule="cosine", warmup_iters=15,
            optimizer="normuon", muon_lr=0.02, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
            sampling="shuffle", eval_interval=150, eval_iters=10,
        ),
    )


def tiny() -> Config:
    """A model small enough for tests and smoke runs: trains in seconds."""
    return Config(
        model=ModelConfig(
            vocab_size=512, block_size=32, d_model=64, n_layer=2, n_head=4, dropout=0.0,
            pos="learned", norm="layernorm", activation="gelu", tie_embeddings=True,
        ),
        data=DataConfig(path="data/wiki-vital-bpe512", source="wiki-vital", tokenizer="bpe-512"),
        train=TrainConfig(
            batch_size=8, max_iters=50, lr=3e-3, min_lr=3e-4, schedule="cosine", warmup_iters=5,
            weight_decay=0.1, beta2=0.95, grad_clip=1.0, eval_interval=25, eval_iters=4,
            sample_tokens=16,
        ),
    )


def gpt2_124m() -> Config:
    """GPT-2 small's shape (124M parameters with its 50,257 vocab), for GPUs.

    Micro-batch 32 x 2 accumulation steps = 64 sequences (65,536 tokens) per step, compiled: the
    larger micro-batch keeps an H100 busier. It needs a 40 GB-class GPU; with less memory,
    `train.batch_size=16 train.grad_accum=4` (or 8 and 8) keeps the same tokens per step.
    """
    return Config(
        model=ModelConfig(
            vocab_size=50_304, block_size=1024, d_model=768, n_layer=12, n_head=12, dropout=0.0,
            pos="learned", norm="layernorm", activation="gelu", tie_embeddings=True, bias=True,
        ),
        data=DataConfig(path="data/wiki-vital-cl100k", source="wiki-vital", tokenizer="cl100k_base"),
        train=TrainConfig(
            batch_size=32, grad_accum=2, max_iters=5000, lr=6e-4, min_lr=6e-5, schedule="cosine",
            warmup_iters=200, weight_decay=0.1, beta2=0.95, grad_clip=1.0, eval_interval=250,
            eval_iters=20, compile=True,
        ),
    )


def tinystories_gpu() -> Config:
    """llama2.c's 42M TinyStories model's shape, for one GPU: `psyduck prepare tinystories --tokenizer bpe-4096`.

    d_model 512, 8 blocks, 8 heads, context 1024, the Llama recipe llama2.c trains (RoPE, RMSNorm,
    SwiGLU, no biases, tied embeddings, no dropout), 27.4M parameters with a 4,096-token BPE: llama2.c
    finds a 4,096 vocabulary trained on TinyStories gives about as many tokens per story as Llama 2's
    32,000, so val losses per token sit on about the scale of its table (15M 1.072, 42M 0.847, 110M
    0.760). Its train.py's optimisation: 131,072 tokens per step (micro-batch 32 x 4 accumulation
    steps of 1024 tokens), AdamW 5e-4 after 1000 warmup steps, cosine, (0.9, 0.95), decay 0.1,
    clipping 1.0; bf16 autocast and compiled on CUDA; 30,000 steps (3.9B tokens). With less than
    24 GB: `train.batch_size=16 train.grad_accum=8` (the same tokens per step).
    """
    return Config(
        model=ModelConfig(
            vocab_size=4096, block_size=1024, d_model=512, n_layer=8, n_head=8, dropout=0.0,
            pos="rope", norm="rmsnorm", activation="swiglu", tie_embeddings=True, bias=False,
        ),
        data=DataConfig(path="data/tinystories", source="tinystories", tokenizer="bpe-4096"),
        train=TrainConfig(
            batch_size=32, grad_accum=4, max_iters=30_000, lr=5e-4, min_lr=5e-5, schedule="cosine",
            warmup_iters=1000, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, eval_interval=1000,
            eval_iters=100, compile=True,
        ),
    )


def fineweb_edu_gpu() -> Config:
    """GPT-2 small (124.4M parameters) on 10B tokens of FineWeb-Edu, for one GPU: nanoGPT's reproduction.

    `psyduck prepare fineweb-edu --tokenizer gpt2` (sample-10BT, ~10B GPT-2 tokens). The shape of
    gpt2-124m; build-nanogpt's recipe: 524,288 tokens per step (micro-batch 16 x 32 accumulation
    steps of 1024 tokens, sized for a 24 GB GPU; with 80 GB `train.batch_size=64 train.grad_accum=8`
    is faster for the same tokens per step), 19,073 steps (one pass over the 10B tokens), 715 warmup
    steps, cosine 6e-4 -> 6e-5, AdamW (0.9, 0.95), decay 0.1, clipping 1.0; bf16 autocast and compiled
    on CUDA. What to compare with: about 3.28 val loss for GPT-2-small-sized models after 10B tokens
    of FineWeb (llm.c), 3.29 for OpenAI's GPT-2 124M on FineWeb-Edu's val (build-nanogpt).
    """
    return Config(
        model=ModelConfig(
            vocab_size=50_257, block_size=1024, d_model=768, n_layer=12, n_head=12, dropout=0.0,
            pos="learned", norm="layernorm", activation="gelu", tie_embeddings=True, bias=True,
        ),
        data=DataConfig(path="data/fineweb-edu-gpt2", source="fineweb-edu", tokenizer="gpt2"),
        train=TrainConfig(
            batch_size=16, grad_accum=32, max_iters=19_073, lr=6e-4, min_lr=6e-5, schedule="cosine",
            warmup_iters=715, weight_decay=0.1, beta2=0.95, grad_clip=1.0, eval_interval=250, eval_iters=80,
            checkpoint_interval=1000, compile=True,
        ),
    )


presets: dict[str, Config] = {
    "seed-60m": seed_60m(),
    "cpu-small": cpu_small(),
    "tiny": tiny(),
    "gpt2-124m": gpt2_124m(),
    "tinystories-gpu": tinystories_gpu(),
    "fineweb-edu-gpu": fineweb_edu_gpu(),
}


def get_preset(name: str) -> Config:
    """A fresh copy of a named preset."""
    if name not in presets:
        raise PsyDuckError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    return copy.deepcopy(presets[name])
