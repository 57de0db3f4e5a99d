"""The machine a run trains on: device, precision, peak FLOP/s.

- device: cuda > mps > cpu unless the user names one;
- precision: bf16 autocast where the GPU supports it, fp16 autocast + gradient scaler where it does
  not (T4, V100), fp32 on CPU and MPS (CPUs differ in half precision: see `half_precision_note`);
- peak FLOP/s, the denominator of MFU (model FLOPs utilization): a table for known GPUs, and for
  CPUs a matmul measured once, in the process that trains, in a bounded time;
- memory: what is free for the model, so a model too large to allocate is refused before it is;
  and malloc told to keep what a step frees for the next (`keep_freed_memory`, on CPUs 4-11% of a step).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from psyduck.errors import PsyDuckError

if TYPE_CHECKING:
    from psyduck.config import ModelConfig

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
                        seconds: float = 0.25, budget: float = 2.0) -> float:
    """The best square-matmul FLOP/s over `sizes` (one size alone can miss the peak by 15% on a CPU),
    measured in at most about `budget` seconds whatever the dtype.

    A small probe matmul first predicts what each size costs (a matmul's time grows as n^3); a size
    whose warm-up and timed loop would not fit in the time left is skipped. Without the probe, a
    precision the CPU emulates (float16 on most CPUs: seconds per 2048^2 matmul) froze the start of
    a run for minutes before its first line (docs/performance.md ("Peak-FLOP measurement and half precision on CPUs")).
    """
    deadline = time.perf_counter() + budget
    probe_n = 256
    probe = measure_matmul_flops(device, dtype, n=probe_n, seconds=min(seconds, budget) / 5, warmup=1)  # a rough rate
    best = probe
    for n in sizes:
        one_matmul = 2 * n**3 / probe
        left = deadline - time.perf_counter()
        if 3 * one_matmul + seconds > left:  # two warm-ups, the timed loop, and one matmul past its end
            continue
        best = max(best, measure_matmul_flops(device, dtype, n=n, seconds=seconds))
    return best


def measure_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.3,
                         warmup: int = 2) -> float:
    """FLOP/s of a square matmul on this device, timed for about `seconds` after `warmup` untimed ones."""
    g = torch.Generator(device=device).manual_seed(0)  # leave the global RNG alone (exact resume)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(warmup):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while reps == 0 or time.perf_counter() - start < seconds:
        a @ b
        reps += 1
        if device.type != "cpu" and reps % 10 == 0:
            sync(device)
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def half_precision_note(device: torch.device, dtype: torch.dtype) -> str | None:
    """A line for the top of a run when `dtype` is a half precision this CPU computes slowly, else None.

    Whether it is slow is measured, not assumed: CPUs with AMX or AVX-512 BF16 multiply bfloat16
    faster than float32, while float16 on most CPUs is emulated, many times slower. The probe is
    one small matmul timed briefly in each precision.
    """
    if device.type != "cpu" or dtype == torch.float32:
        return None
    half = measure_matmul_flops(device, dtype, n=256, seconds=0.05, warmup=1)
    full = measure_matmul_flops(device, torch.float32, n=256, seconds=0.05, warmup=1)
    if half >= full:
        return None
    name = str(dtype).replace("torch.", "")
    return (
        f"{name} is slow on this CPU: its matmuls run at {half / 1e9:.1f} GFLOP/s against {full / 1e9:.1f} for "
        f"float32 ({full / half:.0f}x slower); --dtype float32 trains faster here"
    )


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory a training step frees for the next step; True if it could.

    A CPU step frees its activations (megabytes each) in backward, and by default malloc hands
    large blocks and the heap's free top back to the kernel, so the next step's forward takes page
    faults, the kernel zeroing every page again: ~6,000 a step for cpu-small, 4-11% of a step
    (benchmarks/train_allocator.py). Blocks under 32 MB (the most glibc allows) then come from the
    heap, and up to 1 GB of free heap stays mapped. A process-wide setting, made by the `train`
    and `finetune` commands, which own their process; elsewhere (not glibc) it does nothing.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this Python runs on
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on `device` (a GPU's free memory, or RAM the OS can give
    without swapping); None where it cannot be known (MPS, a platform without /proc or sysconf)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def format_bytes(n: float) -> str:
    """1.5e9 -> '1.5 GB' (decimal units, as memory is sold)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


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


def require_memory(needed: int, device: torch.device, what: str, fix: str) -> None:
    """Refuse, in one line, to allocate `needed` bytes for `what` on a device that has less free.

    Checked before allocating: a model too large for the machine otherwise ends in a traceback
    from deep inside torch (or, on Linux, in the kernel's out-of-memory killer), with no word on
    how much it asked for.
    """
    free = available_memory(device)
    if free is not None and needed > free:
        raise PsyDuckError(f"{what} needs about {format_bytes(needed)}, but {device} has {format_bytes(free)} free; {fix}")


def model_footprint(cfg: "ModelConfig") -> tuple[int, int]:
    """(parameters, bytes of float32 parameters and buffers) of the model `cfg` describes.

    Counted on PyTorch's meta device, where tensors have shapes but no storage: a model of any
    size is measured without allocating it, so a too-large one can be refused in one line.
    """
    from psyduck.model import GPT

    with torch.device("meta"):
        model = GPT(cfg)
    params = sum(p.numel() for p in model.parameters())
    return params, 4 * (params + sum(b.numel() for b in model.buffers()))


def describe_model(cfg: "ModelConfig", params: int) -> str:
    """'a 103.1B-parameter model (d_model 65536, 2 layers, vocabulary 512)': what to make smaller."""
    size = f"{params / 1e9:,.1f}B" if params >= 1e9 else f"{params / 1e6:,.1f}M"
    return f"a {size}-parameter model (d_model {cfg.d_model}, {cfg.n_layer} layers, vocabulary {cfg.vocab_size:,})"
