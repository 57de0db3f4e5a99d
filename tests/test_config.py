"""The config: string choices checked against their Literal types, presets, and old run folders.

tests/fixtures/old_configs/ holds config.json files exactly as PsyDuck wrote them before
`model.head_bias` existed, and the state-dict shapes the code of that time built from each: a run
folder written then must still load, into a model of the same shapes.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import torch

from psyduck import Config, ModelConfig, PsyDuckError, TrainConfig, presets
from psyduck.config import DataConfig, load_config_json
from psyduck.model import GPT

OLD = Path(__file__).parent / "fixtures" / "old_configs"
OLD_SHAPES = json.loads((OLD / "state_shapes.json").read_text())


OLD_CPU_SMALL = Config(
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


def today(name: str) -> Config:
    """What each old file meant, written with today's keys."""
    expected = {
        "seed-60m": presets["seed-60m"],
        "seed-60m-nobias": presets["seed-60m"].replace({"model.bias": False, "model.head_bias": False}),
        "tiny": presets["tiny"],
        "tiny-loss-fused": presets["tiny"].replace({"train.loss": "fused"}),
        "tiny-loss-plain": presets["tiny"].replace({"train.loss": "plain"}),
        "cpu-small": OLD_CPU_SMALL,  # the preset before issue 21 retuned it
        "gpt2-124m": presets["gpt2-124m"],
    }
    return expected[name]


@pytest.mark.parametrize("name", sorted(OLD_SHAPES))
def test_config_json_written_before_head_bias_loads_as_it_meant(name):
    old = json.loads((OLD / f"{name}.json").read_text())
    assert "head_bias" not in old["model"]  # really the old format
    cfg = load_config_json(OLD / f"{name}.json")
    assert cfg == today(name)
    with torch.device("meta"):  # shapes only: no memory for seed-60m's or GPT-2's weights
        model = GPT(cfg.model)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == OLD_SHAPES[name]


def test_the_seed_keeps_its_biased_untied_head_and_bias_false_drops_it():
    assert load_config_json(OLD / "seed-60m.json").model.head_bias is True
    assert "lm_head.bias" in OLD_SHAPES["seed-60m"] and "lm_head.bias" not in OLD_SHAPES["seed-60m-nobias"]
    assert load_config_json(OLD / "tiny.json").model.head_bias is False  # tied: it never had one


def test_todays_config_json_round_trips_and_keeps_an_explicit_head_bias(tmp_path):
    cfg = presets["tiny"].replace({"model.tie_embeddings": False, "model.head_bias": False})
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config_json(tmp_path / "config.json") == cfg  # not "migrated" to bias and untied


def test_every_string_choice_is_a_literal_checked_from_its_values():
    for cls, section in ((ModelConfig, "model"), (TrainConfig, "train")):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if typing.get_origin(hints[f.name]) is not typing.Literal:
                continue
            allowed = typing.get_args(hints[f.name])
            for value in allowed:
                cls(**{f.name: value})
            with pytest.raises(PsyDuckError) as e:
                cls(**{f.name: "nonsense"})
            assert str(e.value) == f"{section}.{f.name}='nonsense' is not one of {', '.join(allowed)}; pick one of them"
    literal = {f.name for f in dataclasses.fields(TrainConfig) if typing.get_origin(typing.get_type_hints(TrainConfig)[f.name]) is typing.Literal}
    assert literal == {"schedule", "dtype", "loss", "on_nan", "optimizer", "sampling"}


def test_presets_live_in_their_own_module_and_the_old_names_still_work():
    import psyduck.config
    from psyduck.presets import get_preset

    assert psyduck.config.get_preset("tiny") == get_preset("tiny") == presets["tiny"]
    assert psyduck.config.presets is presets
    assert get_preset("tiny") is not presets["tiny"]  # a fresh copy to change
    with pytest.raises(PsyDuckError) as e:
        get_preset("gpt5")
    assert str(e.value) == "unknown preset 'gpt5'; choose one of: seed-60m, cpu-small, tiny, gpt2-124m, tinystories-gpu, fineweb-edu-gpu"
