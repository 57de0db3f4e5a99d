"""The CUDA paths: bf16 and fp16 autocast (with GradScaler), torch.compile, flash attention, NCCL.

CI has no GPU, so every test here is skipped there; they run on a machine with one
(`pytest tests/test_cuda.py`). Each asserts behaviour, not just "it ran": equal results to the
fp32 / eager / plain paths within the precision's tolerance, falling losses, checkpoints that load
on the CPU.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from psyduck.runs import load_run
from psyduck.config import ModelConfig
from psyduck.generate import generate
from psyduck.losses import fused_cross_entropy
from psyduck.model import GPT, MultiHeadAttention
from psyduck.train import train

from conftest import REPO, metrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_cfg(tiny_cfg, **over):  # noqa: ANN001, ANN201
    return tiny_cfg.replace({"device": "cuda", "max_iters": 40, "eval_interval": 20, **over})


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_training_learns_and_loads_on_cpu(tiny_cfg, tmp_path, dtype):
    out = tmp_path / dtype
    result = train(cuda_cfg(tiny_cfg, dtype=dtype, lr=3e-3), out, progress=False)
    rows = metrics(out)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5, rows
    assert result["val_loss"] == pytest.approx(rows[-1]["val_loss"])
    model, tok = load_run(out, device="cpu")  # weights saved from the GPU load on the CPU
    assert next(model.parameters()).device.type == "cpu"
    idx = torch.tensor([tok.encode("The world")])
    cpu_logits = model(idx)[0]
    gpu_logits = model.to("cuda")(idx.cuda())[0].cpu()
    torch.testing.assert_close(gpu_logits, cpu_logits, rtol=1e-3, atol=1e-3)  # fp32 weights, TF32 off


def test_fp32_cuda_training_matches_cpu_training(tiny_cfg, tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    over = {"max_iters": 10, "eval_interval": 5, "dtype": "float32"}
    train(tiny_cfg.replace({**over, "device": "cpu"}), tmp_path / "cpu", progress=False)
    train(tiny_cfg.replace({**over, "device": "cuda"}), tmp_path / "gpu", progress=False)
    cpu, gpu = metrics(tmp_path / "cpu"), metrics(tmp_path / "gpu")
    assert [r["step"] for r in cpu] == [r["step"] for r in gpu] == [0, 5, 10]
    for a, b in zip(cpu, gpu, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)


def test_compiled_training_matches_eager(tiny_cfg, tmp_path):
    over = {"max_iters": 10, "eval_interval": 5, "dtype": "bfloat16"}
    train(cuda_cfg(tiny_cfg, **over), tmp_path / "eager", progress=False)
    train(cuda_cfg(tiny_cfg, **over, compile=True), tmp_path / "compiled", progress=False)
    eager, compiled = metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")
    assert [r["step"] for r in eager] == [r["step"] for r in compiled] == [0, 5, 10]
    for a, b in zip(eager, compiled, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=2e-2)
    from safetensors import safe_open

    from psyduck.runs import list_checkpoints

    with safe_open(str(list_checkpoints(tmp_path / "compiled")[-1] / "model.safetensors"), "pt") as f:
        assert f.keys() and not any(k.startswith("_orig_mod.") for k in f.keys())  # saved as the bare model
    model, _ = load_run(tmp_path / "compiled")
    fresh = GPT(model.config)  # what was loaded is the trained weights, not an initialisation
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))


def test_flash_attention_kernel_runs_our_attention_and_matches_the_teaching_heads():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = ModelConfig(vocab_size=64, block_size=256, d_model=256, n_layer=1, n_head=4, dropout=0.0)
    attn = MultiHeadAttention(cfg).cuda()
    teaching = MultiHeadAttention(dataclasses.replace(cfg, attention="teaching")).cuda()
    teaching.load_state_dict(attn.state_dict())  # the same weights, one head at a time
    x = torch.randn(2, 256, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot run these shapes
            fast = attn(x)
        fast.float().sum().backward()
        slow = teaching(x)
    torch.testing.assert_close(fast.float(), slow.float(), rtol=2e-2, atol=2e-2)


def test_fused_loss_under_bf16_autocast_matches_plain_loss():
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(300, 64, device="cuda", generator=g, requires_grad=True)
    w = (torch.randn(5000, 64, device="cuda", generator=g) * 0.1).requires_grad_()
    y = torch.randint(0, 5000, (300,), device="cuda", generator=g)
    y[::7] = -1
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), y, ignore_index=-1)
        ref_grads = torch.autograd.grad(ref, (h, w))
        got = fused_cross_entropy(h, w, None, y, rows_per_chunk=64)
        grads = torch.autograd.grad(got, (h, w))
    torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-2)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-3)


def test_kv_cache_generation_equals_full_recompute():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, block_size=32, d_model=64, n_layer=2, n_head=4, dropout=0.0, pos="rope")
    model = GPT(cfg).cuda().eval()
    idx = torch.randint(0, 300, (2, 5), device="cuda")
    out = generate(model, idx, max_new_tokens=60, top_k=1)  # greedy, past the window (cache rebuilt)
    seq = idx
    with torch.no_grad():
        for _ in range(60):  # the seed's way: re-run the cropped context for every token
            ctx = seq[:, -cfg.block_size:]
            nxt = model(ctx)[0][:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    # the cache keeps half a window after a crop, so compare up to the first crop exactly
    first = cfg.block_size - idx.shape[1] + 1
    assert torch.equal(out[:, : idx.shape[1] + first], seq[:, : idx.shape[1] + first])


def test_nccl_process_group_under_torchrun(tiny_data, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29617",
         "-m", "psyduck", "train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(tmp_path / "run"),
         "--no-progress", "max_iters=10", "eval_interval=5", "sample_tokens=0", "device=cuda", "dtype=bfloat16"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "1 process(es) (nccl)" in run.stderr
    assert [r["step"] for r in metrics(tmp_path / "run")] == [0, 5, 10]
