"""The model's behaviour: both attention paths agree, the KV cache changes nothing, sizes are right."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torch.nn.functional as F

from psyduck import GPT, ModelConfig, PsyDuckError, presets
from psyduck.generate import GenerationParams, KVCache, generate, stream
from psyduck.generate.sampling import sample_next
from psyduck.losses import FusedLoss
from psyduck.model import Attention, fused_attention

VARIANTS = [
    dict(pos="sinusoidal", norm="layernorm", activation="relu", tie_embeddings=False, bias=True, head_bias=True),
    dict(pos="learned", norm="layernorm", activation="gelu", tie_embeddings=True, bias=True),
    dict(pos="rope", norm="rmsnorm", activation="swiglu", tie_embeddings=False, bias=False, n_kv_head=2),
    dict(pos="rope", norm="layernorm", activation="gelu", tie_embeddings=True, bias=False, n_kv_head=1),
    # the issue-21 levers: ReLU², QK-norm (before RoPE, and without it), logit soft-capping
    dict(pos="rope", norm="rmsnorm", activation="relu2", bias=False, n_kv_head=2, qk_norm=True, logit_softcap=3.0),
    dict(pos="learned", norm="layernorm", activation="relu2", tie_embeddings=True, qk_norm=True, logit_softcap=0.5),
]


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=97, block_size=16, d_model=32, n_layer=2, n_head=4, dropout=0.0)
    return ModelConfig(**{**base, **kw})


def pair(cfg: ModelConfig) -> tuple[GPT, GPT]:
    """The same weights in a fast-path and a teaching-path model."""
    torch.manual_seed(0)
    fast = GPT(cfg).eval()
    teach = GPT(dataclasses.replace(cfg, attention="teaching")).eval()
    teach.load_state_dict(fast.state_dict())
    return fast, teach


def recompute_greedy(model: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The seed's generation: re-run the whole (cropped) context for every new token."""
    bs = model.config.block_size
    for _ in range(n):
        logits, _ = model(idx[:, -bs:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['pos']}-{v['activation']}")
def test_teaching_and_fast_attention_agree(variant):
    fast, teach = pair(small(**variant))
    idx = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(2))
    lf, loss_f = fast(idx, targets)
    lt, loss_t = teach(idx, targets)
    torch.testing.assert_close(lf, lt, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_f, loss_t, atol=1e-5, rtol=1e-5)
    loss_f.backward()
    loss_t.backward()
    grads_t = dict(teach.named_parameters())
    assert len(grads_t) == len(dict(fast.named_parameters()))
    for name, p in fast.named_parameters():
        assert float(p.grad.abs().max()) > 0, name  # every weight takes part in the loss
        torch.testing.assert_close(grads_t[name].grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_one_head_attention_and_its_mask_exist_only_on_the_teaching_path():
    fast, teach = pair(small())
    assert not any(isinstance(m, Attention) for m in fast.modules())
    assert not any(name.endswith("mask") for name, _ in fast.named_buffers())
    heads = [m for m in teach.modules() if isinstance(m, Attention)]
    assert len(heads) == 2 and heads[0].mask.shape == (16, 16)  # one per block, block_size²


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['pos']}-{v['activation']}")
@pytest.mark.parametrize("attention", ["fast", "teaching"])
def test_kv_cache_greedy_equals_recompute(variant, attention):
    torch.manual_seed(0)
    model = GPT(small(attention=attention, **variant)).eval()
    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(3))
    n = model.config.block_size - prompt.shape[1] + 1  # fill the window exactly
    cached = generate(model, prompt, max_new_tokens=n, temperature=0)
    assert torch.equal(cached, recompute_greedy(model, prompt, n))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['pos']}-{v['activation']}")
@pytest.mark.parametrize("attention", ["fast", "teaching"])
def test_forward_with_a_cache_equals_the_forward_without(variant, attention):
    """Chunks of 5, 3 and 1 tokens through one cache: each chunk's last logits are the full run's."""
    torch.manual_seed(0)
    model = GPT(small(attention=attention, **variant)).eval()
    idx = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(4))
    full = model(idx)[0]  # (2, 9, V)
    cache = KVCache.for_model(model, 2, idx.device, torch.float32)
    with torch.no_grad():
        for start, end in [(0, 5), (5, 8), (8, 9)]:
            logits, loss = model(idx[:, start:end], cache=cache)
            assert logits.shape == (2, 1, 97) and loss is None and cache.length == end
            torch.testing.assert_close(logits[:, 0], full[:, end - 1], atol=1e-5, rtol=1e-5)


def test_loss_without_logits_equals_full_loss():
    torch.manual_seed(0)
    model = GPT(small(**VARIANTS[0])).eval()
    idx = torch.randint(0, 97, (2, 16))
    y = torch.randint(0, 97, (2, 16))
    y[0, :3] = -1
    logits, full = model(idx, y)
    none, fused = model(idx, y, loss=FusedLoss())
    assert none is None
    torch.testing.assert_close(full, fused, atol=1e-5, rtol=1e-5)


def test_seed_60m_has_60_9m_parameters():
    model = GPT(presets["seed-60m"].model)
    assert model.config.vocab_size == 100_277
    assert abs(model.num_params() - 60.9e6) / 60.9e6 < 0.01


def test_seed_forward_signature_and_shapes():
    model = GPT(small())
    idx = torch.randint(0, 97, (2, 10))
    logits, loss = model(idx)
    assert logits.shape == (2, 10, 97) and loss is None
    logits, loss = model(idx, idx)
    assert loss.ndim == 0


def test_generation_crops_long_prompts_and_keeps_going_past_the_window():
    torch.manual_seed(0)
    model = GPT(small()).eval()
    prompt = torch.randint(0, 97, (1, 40))  # longer than block_size 16
    out = generate(model, prompt, max_new_tokens=50, temperature=0)
    assert out.shape == (1, 90)
    assert torch.equal(out[:, :40], prompt)
    # the first new token sees exactly the last 16 prompt tokens, as the seed's crop does
    assert torch.equal(out[:, 40:41], recompute_greedy(model, prompt[:, -16:], 1)[:, -1:])


def test_seed_spelling_max_new_token_and_streaming():
    torch.manual_seed(0)
    model = GPT(small()).eval()
    x = torch.tensor([[1, 2, 3]])
    a = generate(model, x, max_new_token=7, temperature=0.7, top_k=50, seed=5)
    b = generate(model, x, GenerationParams(max_new_tokens=7, temperature=0.7, top_k=50, seed=5))
    assert a.shape == (1, 10) and torch.equal(a, b)
    assert torch.equal(generate(model, x[0], max_new_tokens=7, temperature=0.7, top_k=50, seed=5), a)  # (T,) too
    streamed = list(stream(model, x, max_new_tokens=7, temperature=0.7, top_k=50, seed=5))
    assert len(streamed) == 7 and all(t.shape == (1,) for t in streamed)
    assert torch.equal(torch.cat(streamed), a[0, 3:])


def test_same_seed_same_sample_and_different_seed_differs():
    torch.manual_seed(0)
    model = GPT(small()).eval()
    x = torch.tensor([[5]])
    s1 = generate(model, x, max_new_tokens=30, temperature=1.0, seed=1)
    s2 = generate(model, x, max_new_tokens=30, temperature=1.0, seed=1)
    s3 = generate(model, x, max_new_tokens=30, temperature=1.0, seed=2)
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)


def test_temperature_zero_is_greedy_whatever_the_seed():
    torch.manual_seed(0)
    model = GPT(small()).eval()
    x = torch.tensor([[5, 6]])
    a = generate(model, x, max_new_tokens=12, temperature=0, seed=1)
    assert torch.equal(a, generate(model, x, max_new_tokens=12, temperature=0, seed=2))
    assert torch.equal(a, recompute_greedy(model, x, 12))


def test_generation_stops_at_end_of_text():
    torch.manual_seed(0)
    model = GPT(small(head_bias=True)).eval()
    with torch.no_grad():
        model.lm_head.bias.fill_(-100.0)
        model.lm_head.bias[7] = 100.0  # token 7 always wins
    out = generate(model, torch.tensor([[1, 2]]), max_new_tokens=20, temperature=1.0, eot_id=7)
    assert out.tolist() == [[1, 2, 7]]
    out = generate(model, torch.tensor([[1, 2]]), max_new_tokens=5, temperature=1.0, eot_id=7, ignore_eos=True)
    assert out.tolist() == [[1, 2, 7, 7, 7, 7, 7]]  # ignore_eos: exactly max_new_tokens
    assert generate(model, torch.tensor([[1, 2]]), max_new_tokens=0).tolist() == [[1, 2]]


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, 1.0, top_k=1, generator=g), greedy)
    assert torch.equal(sample_next(logits, 1.0, top_p=1e-6, generator=g), greedy)
    assert torch.equal(sample_next(logits, 0.0), greedy)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 20), p=st.floats(0.05, 1.0), seed=st.integers(0, 10_000))
def test_sampled_tokens_respect_top_k_and_top_p(k, p, seed):
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(seed))
    tok = sample_next(logits, 1.0, top_k=k, top_p=p, generator=torch.Generator().manual_seed(seed))
    ranks = (logits > logits.gather(1, tok[:, None])).sum(-1)  # how many tokens beat the chosen one
    assert (ranks < k).all()
    probs = torch.softmax(torch.topk(logits, k).values, -1)
    before = torch.stack([probs[i, : ranks[i]].sum() for i in range(3)])
    assert (before < p + 1e-6).all()  # the chosen token is inside the nucleus


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), "temperature must be >= 0 (0 means greedy), got -1.0"),
        (dict(top_k=0), "top_k must be a positive integer (or omitted), got 0"),
        (dict(top_p=0.0), "top_p must be in (0, 1], got 0.0"),
        (dict(top_p=1.5), "top_p must be in (0, 1], got 1.5"),
        (dict(max_new_tokens=-3), "max_new_tokens must be a non-negative integer, got -3"),
    ],
)
def test_impossible_sampling_parameters_are_refused(kwargs, message):
    model = GPT(small())
    with pytest.raises(PsyDuckError) as e:
        generate(model, torch.tensor([[1]]), **{"max_new_tokens": 5, **kwargs})
    assert str(e.value) == message
    with pytest.raises(PsyDuckError) as e:
        GenerationParams(**kwargs)
    assert str(e.value) == message


def test_generation_params_are_frozen_and_drop_empty_stop_strings():
    params = GenerationParams(16, 0.7, stop=("", "\n\n"))
    assert params.stop == ("\n\n",) and params.max_new_tokens == 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.temperature = 1.0  # type: ignore[misc]
    assert params.with_knobs(max_new_token=3) == dataclasses.replace(params, max_new_tokens=3)
    with pytest.raises(PsyDuckError, match="at least one prompt token"):
        generate(GPT(small()), torch.zeros(1, 0, dtype=torch.long))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(pos="alibi"), "model.pos='alibi' is not one of sinusoidal, learned, rope; pick one of them"),
        (dict(d_model=30), "model.d_model=30 is not divisible by model.n_head=4; choose a head count that divides the width"),
        (dict(n_kv_head=3), "model.n_kv_head=3 must divide model.n_head=4 (each key/value head serves a whole group of query heads)"),
        (dict(logit_softcap=-1.0), "model.logit_softcap must be >= 0 (0: off), got -1.0"),
        (dict(activation="relu3"), "model.activation='relu3' is not one of relu, gelu, swiglu, relu2; pick one of them"),
    ],
)
def test_bad_model_configs_are_refused(kw, message):
    with pytest.raises(PsyDuckError) as e:
        small(**kw)
    assert str(e.value) == message


@pytest.mark.parametrize("t_q", [16, 1, 5])  # a whole window, one new token, a few after a cached prefix
def test_fused_attention_with_dropout_is_the_teaching_math_with_nn_dropout(t_q):
    """On a CPU, SDPA with dropout_p runs its math path: the teaching head's steps on all heads at
    once, with the same random draws as nn.Dropout on the (B, H, Tq, Tk) weights."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, t, 8, generator=g) for t in (t_q, 16, 16))
    torch.manual_seed(7)
    got = fused_attention(q, k, v, dropout=0.3)
    head = Attention(8, 16, 0.3).train()
    scores = q @ k.transpose(-2, -1) / 8**0.5
    scores.masked_fill_(head.mask[16 - t_q :, :] == 0, float("-inf"))
    torch.manual_seed(7)
    want = F.dropout(F.softmax(scores, dim=-1), 0.3) @ v
    torch.testing.assert_close(got, want)
    assert not torch.equal(got, fused_attention(q, k, v, dropout=0.0))  # something was dropped


def test_head_bias_is_its_own_key():
    assert GPT(presets["seed-60m"].model).lm_head.bias.shape == (100_277,)  # the seed's untied, biased head
    assert GPT(small(bias=True)).lm_head.bias is None  # biases in the blocks only
    both = GPT(small(bias=False, tie_embeddings=True, head_bias=True))
    assert both.lm_head.weight is both.tok_emb.weight and both.lm_head.bias.shape == (97,)
    assert both.blocks[0].ffn.up.bias is None


def test_cpu_training_attention_with_dropout_computes_what_sdpa_computes():
    """Training on a CPU with dropout sends attention through SDPA's math path (its fused kernels have
    no dropout); with (almost surely) nothing dropped, its outputs and gradients equal the kernel's."""
    torch.manual_seed(0)  # p = 1e-7: seeded so the 'nothing dropped' holds every time
    fast = GPT(small(dropout=0.0))
    explicit = GPT(small(dropout=1e-7))
    explicit.load_state_dict(fast.state_dict())
    x = torch.randint(0, 97, (3, 16))
    fast.train(), explicit.train()
    out_e, out_f = explicit(x)[0], fast(x)[0]
    torch.testing.assert_close(out_e, out_f, rtol=1e-5, atol=1e-5)
    out_e.square().mean().backward()
    out_f.square().mean().backward()
    grads = dict(fast.named_parameters())
    assert len(grads) == len(dict(explicit.named_parameters()))
    for name, a in explicit.named_parameters():
        torch.testing.assert_close(a.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_relu_squared_and_its_written_out_gradient_equal_autograd_s(shape, seed):
    from psyduck.model import ReLUSquared

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x.view(-1)[0] = 0.0  # relu's kink: both give gradient 0 there
    upstream = torch.randn(shape, generator=g, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, reference = ReLUSquared()(a), F.relu(b).square()
    ours.backward(upstream)
    reference.backward(upstream)
    assert torch.equal(ours, reference) and torch.equal(a.grad, b.grad)
    assert torch.autograd.gradcheck(ReLUSquared(), (x.clone().requires_grad_(),))
