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
    """The README demo: English-looking text after a few minutes on a 2-core CPU.

    Chosen by measurement (benchmarks/time_to_quality.py) on a 2-core CPU: a 32,768-token BPE
    trained on the corpus (a bigger vocabulary packs more text into each window; the fused loss keeps
    its output layer affordable), 4 blocks of width 256 with RoPE + RMSNorm + GELU, no biases, tied
    embeddings (11.5M parameters). Small batches and no dropout win at these budgets: more steps in
    the same minutes, and a short run sees less than one epoch. 160 steps, cosine from 2e-3.
    """
    return Config(
        model=ModelConfig(
            vocab_size=32_768, block_size=128, d_model=256, n_layer=4, n_head=8, dropout=0.0,
            pos="rope", norm="rmsnorm", activation="gelu", tie_embeddings=True, bias=False,
        ),
        data=DataConfig(path="data/wiki-vital", source="wiki-vital", tokenizer="bpe-32768"),
        train=TrainConfig(
            batch_size=16, max_iters=160, lr=2e-3, min_lr=1e-4, schedule="cosine", warmup_iters=10,
            weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, eval_interval=40, eval_iters=10,
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


presets: dict[str, Config] = {
    "seed-60m": seed_60m(),
    "cpu-small": cpu_small(),
    "tiny": tiny(),
    "gpt2-124m": gpt2_124m(),
}


def get_preset(name: str) -> Config:
    """A fresh copy of a named preset."""
    if name not in presets:
        raise PsyDuckError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    return copy.deepcopy(presets[name])
