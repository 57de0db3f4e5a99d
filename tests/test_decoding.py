"""The generation fast paths compute the same function as the plain ones.

- `DecodeWeights.build(model, exact=True)`: wide Linear layers multiply by transposed copies of their
  weights on the CPU; logits must equal the plain forward's (to float rounding), and the model
  itself must not change (same modules, same state dict, same mode).
- `DecodeWeights.build(model, batched=True)` (a batching server): layers of at least PACKED_MIN
  weights multiply 2+ rows by oneDNN's packed copies; the logits again equal the plain forward's.
- `DecodeWeights.build(model)` (the default): float16 weight copies. Stated tolerance: the next-token
  distribution within 0.005 total variation of float32's, and every log-probability above 1e-4
  within 0.02; a step that overflows float16 is redone exactly.
- `sample_from`: inverse-CDF sampling must draw exactly the given distribution: never a token of
  probability 0, and frequencies that match the probabilities; so must its two-level search
  (`draw_blocked`, for large inputs), which picks the one running sum's token but at rounding ties.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from psyduck import GPT, ModelConfig
from psyduck.generate import DecodeWeights, generate, stream
from psyduck.generate.decode_weights import HALF_MIN, PACKED_MIN, HalfLinear, PackedLinear, TransposedLinear, transposed
from psyduck.generate.sampling import BLOCK, BLOCKED_MIN, draw_blocked, invert_cdf, sample_from


def small_model(**kw) -> GPT:  # noqa: ANN003
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1000, block_size=32, d_model=64, n_layer=2, n_head=4, dropout=0.0, **kw)
    return GPT(cfg).eval()


def wide_model(logit_scale: float = 1.0, offset: float = 0.0, **kw) -> GPT:  # noqa: ANN003
    """d_model 256 (every matrix gets a float16 copy), output layer scaled so that the logits spread
    like a trained model's: random init gives near-uniform next-token distributions (logits' std 0.3);
    a trained cpu-small's have std 1.5 and reach 9.6; logit_scale 10 gives std 3.2, up to 16.
    float16's errors grow with the logits' size (relative ~5e-4). `offset`: logits far from zero as
    GPT-2's are (a common shift per position, which the softmax ignores)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=4096, block_size=64, d_model=256, n_layer=2, n_head=8, dropout=0.0,
                      **{"tie_embeddings": False, **kw})
    model = GPT(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
        if offset:  # one vector added to every output row: each logit of a position moves by ~ +-offset
            u = torch.randn(cfg.d_model, generator=torch.Generator().manual_seed(1))
            model.lm_head.weight.add_(u / u.norm() * offset * 1.7)
    assert min(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) >= HALF_MIN
    return model


def linear_types(model: torch.nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, (torch.nn.Linear, HalfLinear, TransposedLinear))]


@pytest.mark.parametrize("kw", [{}, {"bias": True, "tie_embeddings": True}, {"activation": "swiglu", "pos": "rope"}])
@pytest.mark.parametrize("make", [small_model, wide_model], ids=["d64", "d256"])
def test_exact_decode_weights_give_the_plain_logits_and_leave_the_model_alone(kw, make):
    model = make(**kw).train()
    idx = torch.randint(0, 1000, (2, 9))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model.eval()(idx)[0]
        weights = DecodeWeights.build(model.train(), exact=True)
        fast = weights.net(idx)[0]
        one = weights.net(idx[:, :1])[0]  # the single-row case generation runs
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one, plain[:, :1], rtol=1e-5, atol=1e-5)
    assert TransposedLinear in linear_types(weights.net) and not weights.net.training
    assert set(linear_types(model)) == {torch.nn.Linear} and model.training  # the model is as it was
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert weights.net.tok_emb.weight is model.tok_emb.weight  # shared, not copied


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
@pytest.mark.parametrize("kw", [{}, {"bias": True, "activation": "swiglu", "pos": "rope"}])
def test_batched_decode_weights_pack_the_large_layers_and_give_the_plain_logits(kw):
    model = wide_model(**kw)  # d256, vocabulary 4096: every matrix has at least PACKED_MIN weights
    weights = DecodeWeights.build(model, batched=True)
    assert weights.batched and weights.exact and not weights.half
    packed = [m for m in weights.net.modules() if isinstance(m, PackedLinear)]
    large = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.numel() >= PACKED_MIN]
    assert len(packed) == len(large) > 0
    assert all(isinstance(m.single, TransposedLinear) == (m.single.weight.shape[0] > m.single.weight.shape[1]) for m in packed)
    with torch.no_grad():
        for rows, length in [(1, 1), (2, 1), (16, 1), (3, 7)]:  # one row, a batch's step, a prefill
            idx = torch.randint(0, 4096, (rows, length))
            torch.testing.assert_close(weights.net(idx)[0], model(idx)[0], rtol=1e-5, atol=1e-5)
    assert DecodeWeights.build(model, exact=True).batched is False  # generation keeps one copy per layer


def test_exact_copies_only_for_wide_layers_and_float16_only_for_large_ones():
    model = small_model()  # d_model 64: every matrix under HALF_MIN weights, so float16 is skipped too
    exact, half = DecodeWeights.build(model, exact=True), DecodeWeights.build(model)
    copied = {tuple(m.weight_t.shape[::-1]) for m in exact.net.modules() if isinstance(m, TransposedLinear)}
    assert copied == {(192, 64), (256, 64), (1000, 64)}  # qkv, FFN up, output layer; not proj or down
    assert HalfLinear not in linear_types(half.net) and not half.half
    wide = DecodeWeights.build(wide_model())
    assert set(linear_types(wide.net)) == {HalfLinear} and wide.half


@pytest.mark.parametrize("exact", [True, False])
def test_weights_built_after_an_in_place_change_see_it(exact):
    model = wide_model(bias=True)
    idx = torch.randint(0, 1000, (1, 5))
    with torch.no_grad():
        before = DecodeWeights.build(model, exact).net(idx)[0]
        model.lm_head.weight.mul_(2.0)  # an optimizer step does this between two of the trainer's samples
        model.blocks[0].ffn.up.bias.add_(0.5)  # and to the biases, whose float16 copies are separate
        after = DecodeWeights.build(model, exact).net(idx)[0].log_softmax(-1)  # float16: the output
        plain = model(idx)[0].log_softmax(-1)  # layer's logits move by a constant per position
    tol = 1e-5 if exact else 2e-2
    torch.testing.assert_close(after, plain, rtol=tol, atol=tol)
    assert not torch.allclose(before.log_softmax(-1), after, atol=tol)


def distance(exact_logits: torch.Tensor, half_logits: torch.Tensor) -> tuple[float, float]:
    """(max total variation, max |log p difference| over tokens of probability > 1e-4), per row."""
    lp, lq = exact_logits.double().log_softmax(-1), half_logits.double().log_softmax(-1)
    tv = 0.5 * (lp.exp() - lq.exp()).abs().sum(-1).max()
    dlogp = ((lp - lq).abs() * (lp.exp() > 1e-4)).max()
    return float(tv), float(dlogp)


@given(seed=st.integers(0, 2**31 - 1), length=st.integers(1, 64), logit_scale=st.sampled_from([1.0, 4.0, 10.0]),
       offset=st.sampled_from([0.0, 60.0]),
       kw=st.sampled_from([{}, {"bias": True}, {"activation": "swiglu", "pos": "rope", "norm": "rmsnorm"}]))
@settings(max_examples=25, deadline=None)
def test_float16_copies_keep_the_next_token_distribution(seed, length, logit_scale, offset, kw):
    model = wide_model(logit_scale, offset, **kw)
    idx = torch.randint(0, 4096, (2, length), generator=torch.Generator().manual_seed(seed))
    weights = DecodeWeights.build(model)
    with torch.no_grad():
        exact = model(idx)[0]
        half = weights.net(idx)[0]
    assert isinstance(weights.net.lm_head, HalfLinear)  # the float16 path ran
    assert not torch.equal(half, exact)
    if offset and length >= 8:  # the logits really sit far from zero (at some positions: h . u varies)
        assert float(exact.mean(-1).abs().max()) > 30
    tv, dlogp = distance(exact, half)
    assert tv <= 0.005 and dlogp <= 0.02, (tv, dlogp)


def test_a_float16_overflow_redoes_the_step_exactly():
    model = wide_model(10.0)
    with torch.no_grad():
        model.blocks[0].norm2.weight.fill_(1e5)  # FFN inputs beyond float16's 65504
    idx = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert not bool(DecodeWeights.build(model).net(idx)[0].isfinite().all())  # the float16 path alone overflows
        assert bool(model(idx)[0].isfinite().all())
    ours = generate(model, idx, max_new_tokens=20, temperature=0)
    assert torch.equal(ours, generate(model, idx, max_new_tokens=20, temperature=0, exact=True))


def test_interleaved_exact_and_float16_streams_do_not_mix():
    model = wide_model(10.0)
    idx = torch.tensor([[1, 2]])
    alone = generate(model, idx, max_new_tokens=30, temperature=0, exact=True)
    exact = stream(model, idx, max_new_tokens=30, temperature=0, exact=True)
    half = stream(model, idx, max_new_tokens=30, temperature=0)
    together = []
    for a, _ in zip(exact, half):  # one thread, the two generators taking turns
        together.append(a)
    assert torch.equal(torch.cat([idx, torch.stack(together, 1)], 1), alone)


@given(rows=st.integers(1, 1200), cols=st.integers(1, 40))
@settings(max_examples=25, deadline=None)
def test_blocked_transpose_is_the_transpose(rows, cols):
    w = torch.randn(rows, cols)
    assert torch.equal(transposed(w), w.t())


@given(v=st.integers(2, 300), zeros=st.floats(0.0, 0.9), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_sampling_never_draws_a_token_of_probability_zero(v, zeros, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(4, v, generator=g)
    probs[torch.rand(4, v, generator=g) < zeros] = 0.0
    probs[:, v // 2] += 1e-3  # every row keeps at least one token (v // 2 >= 1)
    probs[:, 0] = 0.0  # a leading zero: a uniform draw of exactly 0 must not pick it
    draws = torch.stack([sample_from(probs, g) for _ in range(50)])  # (50, 4)
    assert bool((probs.gather(1, draws.t()) > 0).all())


@given(v=st.integers(1, 3 * BLOCK + 5), zeros=st.floats(0.0, 0.99), zero_block=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_the_two_level_draw_never_picks_a_token_of_probability_zero(v, zeros, zero_block, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(6, v, generator=g)
    probs[torch.rand(6, v, generator=g) < zeros] = 0.0
    if zero_block:
        probs[:, :BLOCK] = 0.0  # a whole block of nothing: u can never stop in it
    probs[:, v - 1] += 1e-3  # every row keeps a token (the ragged last block's last one, often)
    probs[:, 0] = 0.0 if v > 1 else probs[:, 0]
    for _ in range(30):
        picked = draw_blocked(probs, g)
        assert bool((probs.gather(1, picked[:, None]) > 0).all())
        assert int(picked.max()) < v


def test_the_two_level_draw_is_the_running_sums_draw():
    """Same uniforms, same weights: the same token as one running sum over the vocabulary, but
    where u falls within rounding of a boundary (the sums are added in another order)."""
    g = torch.Generator().manual_seed(0)
    for vocab in (8192, 1000, 100_277):  # whole blocks, ragged ones
        weights = torch.exp2(torch.randn(16, vocab, generator=g) * 4)
        agree = 0
        for _ in range(20):
            uniform = torch.rand(16, 1, generator=g)
            agree += int((draw_blocked(weights, uniform=uniform) == invert_cdf(weights.cumsum(-1), uniform=uniform)).sum())
        assert agree >= 0.98 * 320, (vocab, agree)
    assert BLOCKED_MIN <= 16 * 8192  # a 16-row server step of an 8,192-token vocabulary takes it


def test_the_two_level_draws_frequencies_match_the_probabilities():
    g = torch.Generator().manual_seed(1)
    probs = torch.zeros(2 * BLOCK + 3)
    probs[[0, 5, BLOCK - 1, BLOCK, 2 * BLOCK + 2]] = torch.tensor([0.4, 0.1, 0.2, 0.25, 0.05])
    n = 20_000
    draws = draw_blocked(probs.expand(n, -1), g)
    freq = torch.bincount(draws, minlength=probs.numel()).double() / n
    tol = 5 * torch.sqrt(probs.double() * (1 - probs.double()) / n)
    assert bool(((freq - probs.double()).abs() <= tol + 1e-12).all()), freq[probs > 0]


def test_sampling_frequencies_match_the_probabilities():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.15, 0.05]])
    n = 20_000
    draws = sample_from(probs.expand(n, 5), g)
    freq = torch.bincount(draws, minlength=5).double() / n
    # 5 standard errors: a false alarm about once in a million runs
    tol = 5 * torch.sqrt(probs[0].double() * (1 - probs[0].double()) / n)
    assert bool(((freq - probs[0].double()).abs() <= tol + 1e-12).all()), freq
    assert freq[1] == 0.0


def test_same_generator_seed_same_draws():
    probs = torch.softmax(torch.randn(3, 100), -1)
    a = sample_from(probs, torch.Generator().manual_seed(7))
    b = sample_from(probs, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_threads_sharing_one_set_of_decode_weights_each_get_their_own_sample():
    """The server's way: one `DecodeWeights` for every request, generations in several threads."""
    import threading

    model = wide_model()
    weights = DecodeWeights.build(model)
    idx = torch.randint(0, 1000, (1, 3))
    outs: dict[int, torch.Tensor] = {}

    def run(seed: int) -> None:
        outs[seed] = generate(model, idx, max_new_tokens=40, seed=seed, weights=weights)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outs) == list(range(6))
    for seed, out in outs.items():  # each as if it had run alone
        assert torch.equal(out, generate(model, idx, max_new_tokens=40, seed=seed))
    assert len({tuple(o[0].tolist()) for o in outs.values()}) > 1


def test_generated_tokens_can_feed_training():
    """Generation runs its model calls in inference mode; what it returns must be ordinary tensors
    (inference tensors cannot be saved for backward)."""
    model = wide_model().train()
    idx = torch.tensor([[1, 2, 3]])
    streamed = list(stream(model, idx, max_new_tokens=4, seed=0))
    out = generate(model, idx, max_new_tokens=4, seed=0)
    assert not any(t.is_inference() for t in [*streamed, out])
    _, loss = model(out[:, :-1], out[:, 1:])
    loss.backward()
    assert float(model.lm_head.weight.grad.abs().sum()) > 0
    assert model.training  # generation leaves the model's mode alone
