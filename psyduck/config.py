"""Typed configuration: what a model is, where its data lives, how it is trained.

Four dataclasses, one per concern, grouped in `Config`. The same objects serve the Python API,
the CLI (`--preset`, `--config file.toml`, flags and `key=value` overrides) and the run folder's
`config.json`, so a run can always be rebuilt from what it saved.

String choices are `Literal` types: the allowed values are read from the type itself, in one
place (`_check_choices`), so the type, the check and the error message cannot drift apart.
`load_config_json` migrates the keys of run folders written by older versions (`_migrate`).

Named presets, each a complete `Config`, live in psyduck/presets.py:

    from psyduck import presets
    cfg = presets["seed-60m"]          # cfg.model, cfg.data, cfg.train
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from psyduck.errors import PsyDuckError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


Positions = Literal["sinusoidal", "learned", "rope"]
Norm = Literal["layernorm", "rmsnorm"]
Activation = Literal["relu", "gelu", "swiglu", "relu2"]
AttentionPath = Literal["fast", "teaching"]
Schedule = Literal["constant", "cosine", "wsd"]
LossChoice = Literal["auto", "fused", "plain"]
Precision = Literal["auto", "float32", "bfloat16", "float16"]
OnNan = Literal["stop", "skip"]
OptimizerChoice = Literal["adamw", "muon", "normuon"]
Sampling = Literal["random", "shuffle"]


def _check_finite(obj: Any, section: str) -> None:
    """Refuse a float field that is NaN or infinite: `lr=nan` would otherwise reach the optimizer,
    and every comparison with NaN is False, so the range checks below would let it through."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise PsyDuckError(f"{section}.{f.name} must be a finite number, got {value}")


def _check_choices(obj: Any, section: str) -> None:
    """Refuse a string field whose value is not one of its `Literal` type's values."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if typing.get_origin(hints[f.name]) is Literal:
            allowed = typing.get_args(hints[f.name])
            value = getattr(obj, f.name)
            if value not in allowed:
                raise PsyDuckError(f"{section}.{f.name}={value!r} is not one of {', '.join(allowed)}; pick one of them")


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
    pos: Positions = "sinusoidal"  # how the model knows where a token is
    norm: Norm = "layernorm"  # pre-norm either way
    activation: Activation = "relu"  # the FFN's non-linearity (swiglu: the gated FFN; relu2: relu(x)², not gated)
    tie_embeddings: bool = False  # share the token embedding with the output layer
    bias: bool = True  # biases in the blocks' Linear layers and LayerNorms (and the final norm)
    head_bias: bool = False  # a bias on the output layer too (the seed has one; GPT-2 and Llama do not)
    attention: AttentionPath = "fast"  # fast (fused qkv + scaled_dot_product_attention) | teaching (one head at a time)
    rope_theta: float = 10_000.0  # RoPE base frequency
    norm_eps: float = 1e-5
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before RoPE and attention
    logit_softcap: float = 0.0  # logits = cap * tanh(logits / cap): no logit beyond +-cap (0: off)

    def __post_init__(self) -> None:
        _check_choices(self, "model")
        _check_finite(self, "model")
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
        if not self.logit_softcap >= 0.0:  # written so that NaN is refused too
            raise PsyDuckError(f"model.logit_softcap must be >= 0 (0: off), got {self.logit_softcap}")

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

    def nonstandard_features(self) -> list[str]:
        """The variants chosen here that the export formats' architectures do not compute, as
        `model.key=value` settings (empty: none). An exporter refuses a model that has any, rather
        than write a file that a runtime would read as a different model.

        relu2 is not among them: Arcee (transformers' ArceeForCausalLM, llama.cpp's arcee) computes
        relu(x)² exactly, and PsyDuck's own Hugging Face code does for the other positions and norms.
        """
        found = []
        if self.qk_norm:
            found.append("model.qk_norm=true")
        if self.logit_softcap:
            found.append(f"model.logit_softcap={self.logit_softcap:g}")
        return found


@dataclass
class DataConfig:
    """Where the prepared token shards live, and how to make them if they do not exist yet."""

    path: str = "data/wiki-vital"  # a folder written by `psyduck prepare` (meta.json + shards)
    source: str = "wiki-vital"  # the corpus `psyduck prepare` reads into `path` (the command a missing folder's error names)
    tokenizer: str = "bpe-8192"  # cl100k_base | gpt2 | bpe-<vocab size> | a tokenizer.json (default: cpu-small's)

    def prepare_command(self) -> str:
        """The `psyduck prepare` command that writes this data, e.g. for a missing folder's error."""
        tokenizer = "" if self.tokenizer == DataConfig.tokenizer else f" --tokenizer {self.tokenizer}"  # prepare's default
        return f"psyduck prepare {self.source}{tokenizer} --out {self.path}"


@dataclass
class TrainConfig:
    """The optimisation recipe and its bookkeeping."""

    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_iters: int = 10_000  # optimizer steps (by the clock: the steps the schedule's shape is drawn over)
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # floor of the cosine and wsd schedules
    schedule: Schedule = "constant"  # constant; cosine: linear warmup, cosine decay to min_lr; wsd: warmup, stable, linear decay
    warmup_iters: int = 0  # linear warmup steps (cosine, wsd); by the clock, warmup_iters/max_iters of the budget
    decay_fraction: float = 0.2  # wsd: the last share of the run (steps, or the time budget) spent decaying to min_lr
    weight_decay: float = 0.0  # AdamW decay, applied to 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.999
    optimizer: OptimizerChoice = "adamw"  # adamw for all; muon: Muon for the blocks' matrices, AdamW for the rest; normuon: NorMuon there
    muon_lr: float = 0.02  # Muon's peak rate (the schedule scales it as it scales lr)
    muon_momentum: float = 0.95  # Muon's momentum (Nesterov)
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 disables
    sampling: Sampling = "random"  # random: windows at random starts; shuffle: each window once an epoch (data/epochs.py)
    eval_interval: int = 50  # evaluate every this many steps
    eval_iters: int = 20  # batches per split in each evaluation
    sample_tokens: int = 64  # length of the text sample written at each evaluation; 0 disables
    checkpoint_interval: int = 0  # save every this many steps; 0 means at each evaluation
    keep_checkpoints: int = 2  # newest checkpoints kept (the best by val loss is kept too)
    seed: int = 1337
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    dtype: Precision = "auto"  # autocast precision
    compile: bool = False  # torch.compile the model
    loss: LossChoice = "auto"  # fused: output layer + loss in blocks, never the full logits; plain: the seed's (losses.py)
    max_seconds: float = 0.0  # train by the clock: this many seconds, the schedule on the share spent (0: by steps)
    on_nan: OnNan = "stop"  # what a NaN or inf loss does
    loggers: str = ""  # also send metrics to: tensorboard, wandb (comma-separated; imported only if named)

    def __post_init__(self) -> None:
        _check_choices(self, "train")
        _check_finite(self, "train")
        for key in ("batch_size", "grad_accum", "eval_interval", "eval_iters"):
            if getattr(self, key) < 1:
                raise PsyDuckError(f"train.{key} must be a positive integer, got {getattr(self, key)}")
        for name in filter(None, (n.strip() for n in self.loggers.split(","))):
            if name not in ("tensorboard", "wandb"):
                raise PsyDuckError(f"unknown logger {name!r} in train.loggers; use tensorboard and/or wandb")
        if not self.muon_lr > 0:
            raise PsyDuckError(f"train.muon_lr must be positive, got {self.muon_lr}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise PsyDuckError(f"train.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if self.max_iters < 0:
            raise PsyDuckError(f"train.max_iters must be >= 0, got {self.max_iters}")
        if self.lr <= 0:
            raise PsyDuckError(f"train.lr must be positive, got {self.lr}")
        if self.max_seconds < 0:
            raise PsyDuckError(f"train.max_seconds must be >= 0 (0: train by steps), got {self.max_seconds:g}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise PsyDuckError(f"train.decay_fraction must be in (0, 1], got {self.decay_fraction}")


@dataclass
class EvalConfig:
    """Benchmark scores during training: multiple-choice tasks scored by log-likelihood (psyduck.tasks).

    `tasks` names one or more sets, comma-separated: `hellaswag` (its validation split, read from
    the Hugging Face datasets cache), `wiki-vital-mc` (built offline from the embedded corpus), or
    the path of a local .jsonl file of HellaSwag-style items ({"ctx", "endings", "label"} or
    {"context", "choices", "label"}). Each is scored on its first `task_limit` items, a fixed
    subset, so the scores of one run are comparable step to step (psyduck/train/task_scores.py).
    """

    tasks: str = ""  # multiple-choice sets scored during training (comma-separated); empty: none
    task_every: int = 0  # score them every this many steps; 0: at each loss evaluation
    task_limit: int = 200  # items of each set scored (its first N)

    def __post_init__(self) -> None:
        if self.task_every < 0:
            raise PsyDuckError(f"eval.task_every must be >= 0 (0: at each evaluation), got {self.task_every}")
        if self.task_limit < 1:
            raise PsyDuckError(f"eval.task_limit must be a positive integer, got {self.task_limit}")

    def task_names(self) -> list[str]:
        return [n.strip() for n in self.tasks.split(",") if n.strip()]


@dataclass
class Config:
    """A whole recipe: model + data + training, and what is measured while it trains."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "Config":
        """Build a Config from nested dicts, refusing keys that do not exist."""
        unknown = set(d) - set(_SECTIONS)
        if unknown:
            raise PsyDuckError(f"unknown section {sorted(unknown)[0]!r} in {where}; sections are {', '.join(_SECTIONS)}")
        return cls(  # a section left out (old run folders have no `eval`) takes its defaults
            model=_build(ModelConfig, d.get("model", {}), "model", where),
            data=_build(DataConfig, d.get("data", {}), "data", where),
            train=_build(TrainConfig, d.get("train", {}), "train", where),
            eval=_build(EvalConfig, d.get("eval", {}), "eval", where),
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
    """Read a TOML config file with [model], [data], [train] and [eval] tables on top of `base`."""
    p = Path(path)
    if p.is_dir():
        raise PsyDuckError(f"--config {p} is a folder; pass the path of a .toml file (e.g. {p / 'config.toml'})")
    if not p.is_file():
        raise PsyDuckError(f"config file not found: {p}; pass the path of a .toml file to --config")
    try:
        d = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:  # TOML is UTF-8 by definition
        raise PsyDuckError(
            f"config file {p} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise PsyDuckError(f"cannot read config file {p} ({e.strerror}); check its permissions") from None
    except tomllib.TOMLDecodeError as e:
        raise PsyDuckError(f"config file {p} is not valid TOML ({e}); fix the syntax") from None
    flat = {}
    for section, values in d.items():
        if section not in _SECTIONS or not isinstance(values, dict):
            raise PsyDuckError(f"unknown section {section!r} in {p}; sections are {', '.join(f'[{s}]' for s in _SECTIONS)}")
        for name, value in values.items():
            flat[f"{section}.{name}"] = value
    return apply_overrides(base or Config(), flat)


def _migrate(d: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config in today's keys (a copy): older versions wrote fewer of them.

    - `model.head_bias` (new): before it, `model.bias` also gave an untied output layer its bias.
    """
    d = copy.deepcopy(d)
    model = d.get("model") if isinstance(d, dict) else None
    if isinstance(model, dict) and "head_bias" not in model:
        model["head_bias"] = bool(model.get("bias", True)) and not model.get("tie_embeddings", False)
    return d


def load_config_json(path: str | Path) -> Config:
    """The Config a run folder saved (config.json), older versions' keys migrated."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PsyDuckError(f"cannot read config {p} ({e}); the run folder is damaged") from None
    return Config.from_dict(_migrate(d), where=str(p))


_SECTIONS = {
    "model": {f.name for f in dataclasses.fields(ModelConfig)},
    "data": {f.name for f in dataclasses.fields(DataConfig)},
    "train": {f.name for f in dataclasses.fields(TrainConfig)},
    "eval": {f.name for f in dataclasses.fields(EvalConfig)},
}


def __getattr__(name: str) -> Any:
    """`psyduck.config.presets` and `.get_preset`, where they lived before psyduck/presets.py."""
    if name in ("presets", "get_preset"):
        return getattr(importlib.import_module("psyduck.presets"), name)
    raise AttributeError(f"module 'psyduck.config' has no attribute {name!r}")
