"""The optimized paths compute what the plain paths compute (no timings here: see benchmarks/).

- the fused linear cross-entropy (`psyduck.losses.fused_cross_entropy`) equals one matmul +
  `F.cross_entropy`, loss and gradients with respect to h, the weight and the bias, for any block
  size, with ignored targets (-1), with and without bias, with and without a logit soft-cap, under
  no_grad and under autocast;
- the model's training call `model(x, y, loss=FusedLoss())` gives the loss and parameter
  gradients of the full-logits call; a `FusedLoss` reuses its own block memory;
- `hardware.keep_freed_memory` (what `train` and `finetune` set) keeps memory freed between steps
  mapped: a cpu-small step then takes a fraction of the page faults it takes by default.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from psyduck.config import ModelConfig, TrainConfig
from psyduck.errors import PsyDuckError
from psyduck.losses import BlockBuffer, FusedLoss, chunk_rows, fused_cross_entropy, make_loss, plain_loss, soft_cap
from psyduck.model import GPT


def plain(h, w, b, y, cap=0.0):
    logits = soft_cap(F.linear(h, w, b), cap)
    return F.cross_entropy(logits.reshape(-1, w.shape[0]), y.reshape(-1), ignore_index=-1)


def loss_and_grads(fn, h, w, b, y, upstream=1.0):
    leaves = [t.detach().clone().requires_grad_() for t in (h, w) + ((b,) if b is not None else ())]
    loss = fn(leaves[0], leaves[1], leaves[2] if b is not None else None, y)
    (loss * upstream).backward()
    return loss.detach(), [t.grad for t in leaves]


def make(n, c, v, bias, ignore, dtype=torch.float64, seed=0, lead=()):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*lead, n, c, generator=g, dtype=dtype)
    w = torch.randn(v, c, generator=g, dtype=dtype) * 0.5
    b = torch.randn(v, generator=g, dtype=dtype) if bias else None
    y = torch.randint(0, v, (*lead, n), generator=g)
    y[torch.rand(y.shape, generator=g) < ignore] = -1
    return h, w, b, y


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40), c=st.integers(1, 17), v=st.integers(2, 300), bias=st.booleans(),
    ignore=st.sampled_from([0.0, 0.3, 0.9]), rows=st.integers(1, 45), upstream=st.sampled_from([1.0, 2.5]),
    seed=st.integers(0, 2**16), cap=st.sampled_from([0.0, 0.0, 0.7, 4.0]),
)
def test_fused_loss_and_grads_equal_plain(n, c, v, bias, ignore, rows, upstream, seed, cap):
    h, w, b, y = make(n, c, v, bias, ignore, seed=seed)
    ref_loss, ref_grads = loss_and_grads(lambda *a: plain(*a, cap=cap), h, w, b, y, upstream)
    loss, grads = loss_and_grads(lambda *a: fused_cross_entropy(*a, rows_per_chunk=rows, softcap=cap), h, w, b, y, upstream)
    if bool((y == -1).all()):  # nothing to average over: NaN, as F.cross_entropy gives, and zero gradients
        assert torch.isnan(loss) and torch.isnan(ref_loss)
    else:
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("bias", [True, False])
def test_logits_far_above_the_right_one_are_shifted_by_the_max(bias):
    """Blocks are shifted by the right token's logit; where another logit is 88+ above it, exp would
    overflow in float32 and the block is redone with the max as shift: the same loss and gradients."""
    h, w, b, y = make(24, 8, 50, bias, 0.0, dtype=torch.float32, seed=3)
    w = w * 60  # logits spread over hundreds
    per_row = F.cross_entropy(F.linear(h.double(), w.double(), b.double() if bias else None), y, reduction="none")
    assert float(per_row.max()) > 100 and float(per_row.min()) < 80  # some blocks overflow, some do not
    as64 = [t.double() if t is not None else None for t in (h, w, b)]
    ref_loss, ref_grads = loss_and_grads(plain, *as64, y)
    loss, grads = loss_and_grads(lambda *a: fused_cross_entropy(*a, rows_per_chunk=5), h, w, b, y)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_fp32_batched_shapes_and_default_block_size(bias):
    h, w, b, y = make(33, 24, 1013, bias, 0.2, dtype=torch.float32, lead=(3,))  # h (3, 33, 24), y (3, 33)
    ref_loss, ref_grads = loss_and_grads(plain, h, w, b, y)
    loss, grads = loss_and_grads(fused_cross_entropy, h, w, b, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_only_some_inputs_need_grad():
    h, w, b, y = make(20, 8, 50, True, 0.1)
    w = w.clone().requires_grad_()
    loss = fused_cross_entropy(h, w, b, y, rows_per_chunk=3)  # h and b are constants
    loss.backward()
    w2 = w.detach().clone().requires_grad_()
    plain(h, w2, b, y).backward()
    torch.testing.assert_close(w.grad, w2.grad)


def test_no_grad_gives_the_same_loss():
    h, w, b, y = make(50, 16, 777, True, 0.25, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(fused_cross_entropy(h, w, b, y, rows_per_chunk=7), plain(h, w, b, y))


@pytest.mark.parametrize("dtype, spread", [(torch.bfloat16, 1.0), (torch.float16, 1.0), (torch.float16, 6.0)])
def test_low_precision_autocast_matches_plain_autocast(dtype, spread):
    """Under autocast the block is shifted by its max as well: here some logits sit ~19 (spread 1) or
    ~115 (spread 6) above the right one, so exp(z - z_y) would pass float16's 65,504 in the matmuls
    that follow."""
    h, w, b, y = make(64, 32, 500, True, 0.1, dtype=torch.float32)
    w = w * spread
    with torch.autocast("cpu", dtype=dtype):
        ref_loss, ref_grads = loss_and_grads(lambda h, w, b, y: F.cross_entropy(F.linear(h, w, b).float(), y, ignore_index=-1), h, w, b, y)
        loss, grads = loss_and_grads(fused_cross_entropy, h, w, b, y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_soft_capped_fused_loss_in_float32_under_autocast_and_without_grad(dtype):
    """The capped block step in the precisions training uses: float32, and bfloat16 matmuls with
    float32 softmax under autocast; and evaluation's loss-only pass."""
    h, w, b, y = make(64, 32, 500, True, 0.1, dtype=torch.float32)
    w = w * 4  # logits of +-10 and more: the cap (5) bends them
    ref = lambda h, w, b, y: F.cross_entropy(soft_cap(F.linear(h, w, b).float(), 5.0), y, ignore_index=-1)  # noqa: E731
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        ref_loss, ref_grads = loss_and_grads(ref, h, w, b, y)
        loss, grads = loss_and_grads(lambda *a: fused_cross_entropy(*a, rows_per_chunk=9, softcap=5.0), h, w, b, y)
        with torch.no_grad():
            alone = fused_cross_entropy(h, w, b, y, softcap=5.0)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(loss, ref_loss, **tol)
    torch.testing.assert_close(alone, ref_loss, **tol)
    assert abs(float(ref_loss) - float(plain(h, w, b, y))) > 0.1  # the cap did change the loss
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, **(tol if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-3)))


def test_chunk_rows_bounds():
    assert chunk_rows(100_277, 2048) == 512
    assert chunk_rows(8192, 2048) == 2048  # a small vocabulary: one block
    assert chunk_rows(10**9, 5) == 1


@pytest.mark.parametrize(
    "variant",
    [
        dict(tie_embeddings=True, bias=False),
        dict(tie_embeddings=False, bias=True, head_bias=True),
        dict(tie_embeddings=False, bias=True, head_bias=True, dropout=0.0, pos="sinusoidal", norm="layernorm",
             activation="relu"),
        dict(tie_embeddings=False, head_bias=True, activation="relu2", qk_norm=True, logit_softcap=2.0),
        dict(tie_embeddings=True, bias=False, logit_softcap=0.3),
    ],
)
def test_model_training_loss_equals_full_logits_loss(variant):
    cfg = dataclasses.replace(
        ModelConfig(vocab_size=301, block_size=16, d_model=32, n_layer=2, n_head=4, dropout=0.0, pos="rope",
                    norm="rmsnorm", activation="gelu"),
        **variant,
    )
    torch.manual_seed(0)
    model = GPT(cfg)  # fp32: the full-logits path computes its loss in fp32
    x = torch.randint(0, 301, (3, 16))
    y = torch.randint(0, 301, (3, 16))
    y[0, :5] = -1
    logits, full = model(x, y)
    assert logits.shape == (3, 16, 301)
    full.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    none, fused = model(x, y, loss=FusedLoss())
    assert none is None
    fused.backward()
    torch.testing.assert_close(fused, full, rtol=1e-6, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_loss_choice_auto_is_fused_on_cpus_and_plain_on_gpus():
    assert isinstance(make_loss("auto", torch.device("cpu")), FusedLoss)
    assert make_loss("auto", torch.device("cuda")) is plain_loss
    assert isinstance(make_loss("fused", torch.device("cuda")), FusedLoss)
    assert make_loss("plain", torch.device("cpu")) is plain_loss
    with pytest.raises(PsyDuckError) as e:
        TrainConfig(loss="chunky")
    assert str(e.value) == "train.loss='chunky' is not one of auto, fused, plain; pick one of them"


def test_training_with_the_plain_loss_follows_the_fused_trajectory(tiny_cfg, tmp_path):
    from psyduck.train import train

    from conftest import metrics

    over = {"max_iters": 8, "eval_interval": 4, "sample_tokens": 0}
    train(tiny_cfg.replace({**over, "loss": "fused"}), tmp_path / "fused", progress=False)
    train(tiny_cfg.replace({**over, "loss": "plain"}), tmp_path / "plain", progress=False)
    fused, plain = metrics(tmp_path / "fused"), metrics(tmp_path / "plain")
    assert len(fused) == len(plain) == 3  # steps 0, 4 and 8
    for a, b in zip(fused, plain):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)


def test_a_fused_loss_reuses_its_own_block_memory():
    """The caller owns the block buffer: one FusedLoss keeps one allocation across calls (CPUs)."""
    head = torch.nn.Linear(16, 300)
    h, y = torch.randn(2, 40, 16), torch.randint(0, 300, (2, 40))
    loss = FusedLoss()
    _, first = loss(h, head, y)
    ptr = loss.buffer.flat.data_ptr()
    _, again = loss(h, head, y)
    assert loss.buffer.flat.data_ptr() == ptr and torch.equal(first, again)
    torch.testing.assert_close(first, plain_loss(h, head, y)[1])
    buf = BlockBuffer()
    assert buf.take(300, 8, torch.device("cpu"), torch.float32).shape == (300, 8)
    assert buf.take(300, 4, torch.device("cpu"), torch.float32).data_ptr() == buf.flat.data_ptr()  # smaller: same memory


FAULTS = """
import resource, sys, torch
from psyduck import hardware
from psyduck.config import get_preset
from psyduck.losses import FusedLoss
from psyduck.model import GPT
kept = hardware.keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
model = GPT(get_preset("cpu-small").model)
opt, loss, x = torch.optim.AdamW(model.parameters()), FusedLoss(), torch.randint(0, 8192, (16, 128))
def step():
    model(x, x, loss=loss)[1].backward()
    opt.step()
    opt.zero_grad()
for _ in range(3):  # the first steps map Adam's state and the heap's working size
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):  # a sum over eight: glibc's own threshold moves, and one step may fault little or much
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keeping_freed_memory_spares_the_next_step_its_page_faults():
    def faults(side: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", FAULTS, side], capture_output=True, text=True, check=True)
        kept, count = out.stdout.split()
        return kept, int(count)

    kept, keep = faults("keep")
    if kept != "True":
        pytest.skip("this C library has no glibc mallopt")
    _, default = faults("default")
    assert default > 4000  # glibc gave freed memory back: cpu-small's steps mapped megabytes again
    assert keep * 4 < default
