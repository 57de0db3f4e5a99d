"""The machine a run trains on: device, precision, peak FLOP/s.

- device: cuda > mps > cpu unless the user names one;
- precision: bf16 autocast where the GPU supports it, fp16 autocast + gradient scaler where it does
  not (T4, V100), fp32 on CPU and MPS (measured on the CI-class CPU without AMX: bf16 matmuls run at
  about half the fp32 speed);
- peak FLOP/s, the denominator of MFU (model FLOPs utilization): a table for known GPUs, and for
  CPUs a fp32 matmul measured once, in the process that trains.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch

from psyduck.errors import PsyDuckError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# dense bf16/fp16 tensor-core peaks, FLOP/s (vendor datasheets)
_GPU_PEAKS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A10": 125e12, "L4": 121e12, "L40": 181e12,
    "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12, "A6000": 155e12,
}


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if present, else mps, else cpu; otherwise the named device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise PsyDuckError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PsyDuckError(f"device {name!r} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PsyDuckError(f"device {name!r} asked for, but MPS is not available here; use --device cpu")
    return dev


def pick_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The autocast precision: bf16 > fp16 on GPUs, fp32 elsewhere, unless named."""
    if name != "auto":
        if name not in _DTYPES:
            raise PsyDuckError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> Any:
    """A context manager running matmuls in `dtype` (nothing to do for fp32)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Peak FLOP/s to measure MFU against: the datasheet for known GPUs, else measured here."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in _GPU_PEAKS.items():
            if key in name:
                return peak if dtype != torch.float32 else peak / 2  # TF32 tensor cores: half the bf16 rate
    return measured_peak_flops(device, dtype)


def measured_peak_flops(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048),
                        seconds: float = 0.25) -> float:
    """The best square-matmul FLOP/s over `sizes` (one size alone can miss the peak by 15% on a CPU)."""
    return max(measure_matmul_flops(device, dtype, n=n, seconds=seconds) for n in sizes)


def measure_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of a square matmul on this device, timed for about `seconds`."""
    g = torch.Generator(device=device).manual_seed(0)  # leave the global RNG alone (exact resume)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(2):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
        if device.type != "cpu" and reps % 10 == 0:
            sync(device)
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def flops_per_token(model: torch.nn.Module) -> float:
    """Training FLOPs per token: 6 x matmul parameters + the attention score/value matmuls.

    Each matmul weight costs 2 FLOPs per token forward and 4 backward; embeddings are lookups, not
    matmuls, but the output layer is a matmul even when tied (PaLM appendix B, nanoGPT's estimate).
    """
    cfg = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and not name.startswith(("tok_emb", "pos_emb")))
    if cfg.tie_embeddings:
        n += model.lm_head.weight.numel()
    attn = 12 * cfg.n_layer * cfg.block_size * cfg.d_model  # QK^T and AV, forward + backward
    return 6 * n + attn
