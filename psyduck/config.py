"""Typed configuration: what a model is, where its data lives, how it is trained.

Three dataclasses, one per concern, grouped in `Config`. The same objects serve the Python API,
the CLI (`--preset`, `--config file.toml`, flags and `key=value` overrides) and the run folder's
`config.json`, so a run can always be rebuilt from what it saved.

Named presets live at the bottom of this file. Each one is a complete `Config`:

    from psyduck import presets
    cfg = presets["seed-60m"]          # cfg.model, cfg.data, cfg.train
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psyduck.errors import PsyDuckError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ModelConfig:
    """The architecture. Every variant is chosen here, once, when the model is built."""

    vocab_size: int = 100_277  # embedding rows; set from the tokenizer when training starts
    block_size: int = 128  # context length: how many tokens the model sees at once
    d_model: int = 256  # width of the residual stream
    n_layer: int = 12  # transformer blocks
    n_head: int = 8  # attention heads per block (head size = d_model // n_head)
    n_kv_head: int = 0  # key/value heads for grouped-query attention; 0 means n_head (plain MHA)
    d_ff: int = 0  # FFN hidden width; 0 means 4*d_model (relu/gelu) or ~8/3*d_model (swiglu)
    dropout: float = 0.1  # dropout on attention weights and residual branches while training
    pos: str = "sinusoidal"  # sinusoidal | learned | rope
    norm: str = "layernorm"  # layernorm | rmsnorm (pre-norm either way)
    activation: str = "relu"  # relu | gelu | swiglu
    tie_embeddings: bool = False  # share the token embedding with the output layer
    bias: bool = True  # biases in Linear and LayerNorm layers
    attention: str = "fast"  # fast (fused qkv + scaled_dot_product_attention) | teaching (one head at a time)
    rope_theta: float = 10_000.0  # RoPE base frequency
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        choices = {
            "pos": ("sinusoidal", "learned", "rope"),
            "norm": ("layernorm", "rmsnorm"),
            "activation": ("relu", "gelu", "swiglu"),
            "attention": ("fast", "teaching"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise PsyDuckError(
                    f"model.{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}; pick one of them"
                )
        for key in ("vocab_size", "block_size", "d_model", "n_layer", "n_head"):
            if getattr(self, key) < 1:
                raise PsyDuckError(f"model.{key} must be a positive integer, got {getattr(self, key)}")
        if self.d_model % self.n_head:
            raise PsyDuckError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}; "
                "choose a head count that divides the width"
            )
        if self.kv_heads < 1 or self.n_head % self.kv_heads:
            raise PsyDuckError(
                f"model.n_kv_head={self.n_kv_head} must divide model.n_head={self.n_head} "
                "(each key/value head serves a whole group of query heads)"
            )
        if self.pos == "rope" and self.head_size % 2:
            raise PsyDuckError(f"rope needs an even head size, got {self.head_size}; change d_model or n_head")
        if not 0.0 <= self.dropout < 1.0:
            raise PsyDuckError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def ffn_hidden(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.activation == "swiglu":  # keep the parameter count of a 4x MLP: 3 matrices of 8/3 d
            return 32 * ((8 * self.d_model // 3 + 31) // 32)
        return 4 * self.d_model


@dataclass
class DataConfig:
    """Where the prepared token shards live, and how to make them if they do not exist yet."""

    path: str = "data/wiki-vital"  # a folder written by `psyduck prepare` (meta.json + shards)
    source: str = "wiki-vital"  # what `psyduck train` prepares into `path` when it is missing
    tokenizer: str = "bpe-32768"  # cl100k_base | bpe-<vocab size>


@dataclass
class TrainConfig:
    """The optimisation recipe and its bookkeeping."""

    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_iters: int = 10_000  # optimizer steps
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # floor of the cosine schedule
    schedule: str = "constant"  # constant | cosine (linear warmup, then cosine decay to min_lr)
    warmup_iters: int = 0  # linear warmup steps (cosine schedule)
    weight_decay: float = 0.0  # AdamW decay, applied to 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 disables
    eval_interval: int = 50  # evaluate every this many steps
    eval_iters: int = 20  # batches per split in each evaluation
    sample_tokens: int = 64  # length of the text sample written at each evaluation; 0 disables
    checkpoint_interval: int = 0  # save every this many steps; 0 means at each evaluation
    keep_checkpoints: int = 2  # newest checkpoints kept (the best by val loss is kept too)
    seed: int = 1337
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast precision)
    compile: bool = False  # torch.compile the model
    loss: str = "auto"  # auto | fused | plain: output layer + loss in chunks, or full logits (see losses.py)
    max_seconds: float = 0.0  # stop after this much training time (0: no limit)
    on_nan: str = "stop"  # stop | skip: what a NaN or inf loss does
    loggers: str = ""  # also send metrics to: tensorboard, wandb (comma-separated; imported only if named)

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise PsyDuckError(f"train.schedule={self.schedule!r} is not one of constant, cosine; pick one of them")
        if self.loss not in ("auto", "fused", "plain"):
            raise PsyDuckError(f"train.loss={self.loss!r} is not one of auto, fused, plain; pick one of them")
        if self.on_nan not in ("stop", "skip"):
            raise PsyDuckError(f"train.on_nan={self.on_nan!r} is not one of stop, skip; pick one of them")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise PsyDuckError(
                f"train.dtype={self.dtype!r} is not one of auto, float32, bfloat16, float16; pick one of them"
            )
        for key in ("batch_size", "grad_accum", "eval_interval", "eval_iters"):
            if getattr(self, key) < 1:
                raise PsyDuckError(f"train.{key} must be a positive integer, got {getattr(self, key)}")
        for name in filter(None, (n.strip() for n in self.loggers.split(","))):
            if name not in ("tensorboard", "wandb"):
                raise PsyDuckError(f"unknown logger {name!r} in train.loggers; use tensorboard and/or wandb")
        if self.max_iters < 0:
            raise PsyDuckError(f"train.max_iters must be >= 0, got {self.max_iters}")
        if self.lr <= 0:
            raise PsyDuckError(f"train.lr must be positive, got {self.lr}")


@dataclass
class Config:
    """A whole recipe: model + data + training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "Config":
        """Build a Config from nested dicts, refusing keys that do not exist."""
        unknown = set(d) - {"model", "data", "train"}
        if unknown:
            raise PsyDuckError(f"unknown section {sorted(unknown)[0]!r} in {where}; sections are model, data, train")
        return cls(
            model=_build(ModelConfig, d.get("model", {}), "model", where),
            data=_build(DataConfig, d.get("data", {}), "data", where),
            train=_build(TrainConfig, d.get("train", {}), "train", where),
        )

    def replace(self, overrides: dict[str, Any] | list[str]) -> "Config":
        """A copy with `key=value` overrides applied (see `apply_overrides`)."""
        return apply_overrides(self, overrides)


def _build(cls: type, values: dict[str, Any], section: str, where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise PsyDuckError(f"unknown config key {section}.{key} in {where}; see `psyduck config --preset NAME` for valid keys")
    return cls(**values)


def _section_of(key: str) -> tuple[str, str]:
    """`train.lr` -> ("train", "lr"); a bare `lr` is looked up in the section that has it."""
    if "." in key:
        section, name = key.split(".", 1)
        if section in _SECTIONS and name in _SECTIONS[section]:
            return section, name
    else:
        owners = [s for s, names in _SECTIONS.items() if key in names]
        if len(owners) == 1:
            return owners[0], key
    raise PsyDuckError(f"unknown config key {key!r}; see `psyduck config --preset NAME` for valid keys")


def _parse_value(text: str, like: Any, key: str) -> Any:
    """Turn the text of an override into the type of the field it replaces."""
    try:
        if isinstance(like, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(like, int):
            return int(float(text)) if float(text).is_integer() else int(text)
        if isinstance(like, float):
            return float(text)
    except ValueError:
        raise PsyDuckError(f"bad value {text!r} for {key}: expected {type(like).__name__}") from None
    return text


def apply_overrides(cfg: Config, overrides: dict[str, Any] | list[str]) -> Config:
    """Return a copy of `cfg` with overrides: ["train.lr=1e-3", "n_layer=4"] or {"lr": 1e-3}."""
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise PsyDuckError(f"override {item!r} is not key=value; write it like lr=1e-3 or model.n_layer=4")
            key, value = item.split("=", 1)
            pairs[key.strip()] = value.strip()
        overrides = pairs
    d = copy.deepcopy(cfg.to_dict())
    for key, value in overrides.items():
        section, name = _section_of(key)
        like = d[section][name]
        d[section][name] = _parse_value(value, like, f"{section}.{name}") if isinstance(value, str) else value
    return Config.from_dict(d)


def load_toml(path: str | Path, base: Config | None = None) -> Config:
    """Read a TOML config file with [model], [data] and [train] tables on top of `base`."""
    p = Path(path)
    if not p.is_file():
        raise PsyDuckError(f"config file not found: {p}; pass the path of a .toml file to --config")
    try:
        d = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise PsyDuckError(f"config file {p} is not valid TOML ({e}); fix the syntax") from None
    flat = {}
    for section, values in d.items():
        if section not in _SECTIONS or not isinstance(values, dict):
            raise PsyDuckError(f"unknown section {section!r} in {p}; sections are [model], [data], [train]")
        for name, value in values.items():
            flat[f"{section}.{name}"] = value
    return apply_overrides(base or Config(), flat)


def load_config_json(path: str | Path) -> Config:
    p = Path(path)
    try:
        return Config.from_dict(json.loads(p.read_text(encoding="utf-8")), where=str(p))
    except (OSError, json.JSONDecodeError) as e:
        raise PsyDuckError(f"cannot read config {p} ({e}); the run folder is damaged") from None


_SECTIONS = {
    "model": {f.name for f in dataclasses.fields(ModelConfig)},
    "data": {f.name for f in dataclasses.fields(DataConfig)},
    "train": {f.name for f in dataclasses.fields(TrainConfig)},
}


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

def _seed_60m() -> Config:
    """The notebook PsyDuck started from, exactly: about 60.9M parameters with cl100k_base.

    d_model 256, 12 blocks, 8 heads, context 128, batch 16, AdamW lr 3e-4 (constant), dropout 0.1,
    10,000 iterations, eval every 50 over 20 batches, sinusoidal positions, pre-norm LayerNorm,
    ReLU FFN (d -> 4d -> d), untied output layer. 84% of the parameters are the two 100,277-row
    embedding matrices, which is why the seed trains slowly on a CPU.
    """
    return Config(
        model=ModelConfig(
            vocab_size=100_277, block_size=128, d_model=256, n_layer=12, n_head=8, dropout=0.1,
            pos="sinusoidal", norm="layernorm", activation="relu", tie_embeddings=False, bias=True,
        ),
        data=DataConfig(path="data/wiki-vital-cl100k", source="wiki-vital", tokenizer="cl100k_base"),
        train=TrainConfig(
            batch_size=16, max_iters=10_000, lr=3e-4, schedule="constant", weight_decay=0.0,
            beta1=0.9, beta2=0.999, grad_clip=0.0, eval_interval=50, eval_iters=20,
        ),
    )


def _cpu_small() -> Config:
    """The README demo: English-looking text after a few minutes on a 2-core CPU.

    Chosen by measurement (benchmarks/time_to_quality.py) on the 2-core CI-class machine this
    project is tested on (AMD EPYC, AVX2, no AVX-512/AMX; fp32; torch 2.13; shared with other jobs,
    so +-10% on single runs), training on the embedded corpus (wiki-vital, 4.6 MB of train text):
    - tokenizer: a byte-level BPE with 32,768 tokens trained on the corpus (0.95M train tokens,
      4.7 bytes per token). Bits per byte that a unigram model of the train split gets on val:
      bpe-4096 2.74, bpe-8192 2.52, bpe-16384 2.35, bpe-32768 2.24 (cl100k_base: 2.31). A bigger
      vocabulary starts every model lower and packs more text into each 128-token window; the
      fused output layer + loss (psyduck/losses.py) keeps its 32k-wide output affordable.
    - size: d_model 256, 4 blocks, 8 heads, context 128, RoPE + RMSNorm + GELU, no biases, tied
      embeddings: 11.5M parameters (8.4M of them the embedding), ~1,200 tokens/s, ~68% MFU here
      when chosen (1,269 tokens/s, 80% MFU since the loss's shift by the right logit).
    - sweep, `time_to_quality.py --only cpu-small --minutes M` (val bits per byte at the end of M
      minutes; the seed recipe ends its 10 minutes at 2.16 on the FACTS machine):
        M=2, bpe-8192, 6 blocks: batch 32 dropout 0.1 warmup 50 (the first version) 2.45;
          dropout 0 + warmup 10: 2.46; + lr 3e-3: 2.47; batch 16: 2.37; 4 blocks: 2.41;
          bpe-4096: 2.62; batch 8: (stopped)
        M=2, dropout 0, warmup 10, batch 16: bpe-16384 2.25; bpe-32768 2.22 (batch 8: 2.21;
          4 blocks: 2.21)
        M=4, bpe-32768, dropout 0, warmup 10: 4 blocks batch 16 lr 2e-3 2.118; 6 blocks 2.138;
          lr 3e-3 2.158; batch 8 (similar to batch 16 through its first minute)
        M=10, this preset, both sides (the full benchmark; benchmarks/results/cpu_time_to_quality.*):
          cpu-small 1.985 after 320 steps; the seed recipe 2.395 after 62 steps (12 s a step
          here, half the FACTS machine's pace); cpu-small passed 2.395 at 25 s (ratio 0.04) and
          the FACTS figure 2.16 at ~2.7 min; it ends 17% below the seed recipe (target: 30%)
        M=10, cpu-small alone after the loss's shift by the right logit (~20% more steps): 1.945
          after 390 steps (19% below 2.395). A power law fitted to that curve from minute 1 on
          (1.54 + 2.89 t^-0.31, t in seconds) reaches 1.9 at ~14 minutes, 1.8 at ~39 and the
          target's 1.68 (30% below 2.395) at ~290: out of reach of any recipe at this speed
      Dropout 0: a 10-minute run sees under one epoch, and dropout on CPU cost ~30% of the step
      when measured (torch's slow Bernoulli sampler, since replaced by `model.Dropout`'s 16-bit
      masks; it still forces the explicit attention path). Small batches (more steps)
      win at these budgets; 4 blocks beat 6 (more steps in the same time).
    - schedule: 160 steps of batch 16 (about 6 minutes here with its evaluations; val 2.0 bits
      per byte in the demo from a fresh clone; the time-to-quality benchmark
      stretches the cosine over its own budget), warmup 10, cosine from 2e-3 to 1e-4, AdamW
      betas (0.9, 0.95), weight decay 0.1, clipping at 1.0.
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


def _tiny() -> Config:
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


def _gpt2_124m() -> Config:
    """GPT-2 small's shape (124M parameters with its 50,257 vocab), for GPUs.

    Micro-batch 32 x 2 accumulation steps = 64 sequences (65,536 tokens) per step: on an H100 (bf16,
    compiled, flash attention) micro-batch 32 reaches 40% MFU where 16 reached 37%
    (benchmarks/results/h100_train_throughput_gpt2*.log). It needs a 40 GB-class GPU; with less
    memory, `train.batch_size=16 train.grad_accum=4` (or 8 and 8) keeps the same tokens per step.
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
    "seed-60m": _seed_60m(),
    "cpu-small": _cpu_small(),
    "tiny": _tiny(),
    "gpt2-124m": _gpt2_124m(),
}


def get_preset(name: str) -> Config:
    """A fresh copy of a named preset."""
    if name not in presets:
        raise PsyDuckError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    return copy.deepcopy(presets[name])
