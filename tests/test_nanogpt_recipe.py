"""The benchmark's nanoGPT peer (benchmarks/baselines/nanogpt_recipe.py): its shape, its
initialisation, its optimizer groups and its schedule match the README recipe it is written from."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from baselines.nanogpt_recipe import (
    NanoConfig,
    NanoGPT,
    NanoRecipe,
    lr_at,
    nanogpt_optimizer,
)


def test_parameter_count_is_the_readme_models():
    model = NanoGPT(NanoConfig(vocab_size=8192))
    d, V, T, L = 128, 8192, 64, 4
    per_block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * (2 * d)
    expected = V * d + T * d + L * per_block + 2 * d  # tied output layer: no extra V x d matrix
    assert sum(p.numel() for p in model.parameters()) == expected == 1_850_112  # 1.85M
    assert model.head.weight is model.tok_emb.weight


def test_forward_shapes_and_loss_at_init_is_near_uniform():
    torch.manual_seed(0)
    model = NanoGPT(NanoConfig(vocab_size=512, block_size=16, n_layer=2, n_head=4, n_embd=32))
    x, y = torch.randint(0, 512, (3, 16)), torch.randint(0, 512, (3, 16))
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, 512)
    assert loss.item() == pytest.approx(math.log(512), rel=0.02)  # small init: close to uniform
    assert model(x)[1] is None


def test_residual_projections_get_the_scaled_init():
    torch.manual_seed(0)
    model = NanoGPT(NanoConfig(vocab_size=8192))
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert model.blocks[0].mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_weight_decay_only_on_two_dimensional_tensors():
    model = NanoGPT(NanoConfig(vocab_size=512, block_size=16, n_layer=2, n_head=4, n_embd=32))
    decay, no_decay = nanogpt_optimizer(model, NanoRecipe(), torch.device("cpu")).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert decay["betas"] == (0.9, 0.99)


def test_schedule_warms_up_by_steps_then_follows_the_progress():
    r = NanoRecipe()
    assert lr_at(r, 0, 0.0) == pytest.approx(1e-3 / 101)
    assert lr_at(r, 99, 0.5) == pytest.approx(1e-3 * 100 / 101)
    assert lr_at(r, 100, 0.0) == pytest.approx(1e-3)
    assert lr_at(r, 500, 0.5) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(r, 500, 1.0) == pytest.approx(1e-4) == lr_at(r, 9999, 1.7)
