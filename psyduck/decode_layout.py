"""Faster one-token steps on CPUs: weight copies made for multiplying a single row.

Generating feeds one token at a time, so every weight matrix meets a single row per step (a
matrix-vector product), and the step is bound by how fast the weights stream from memory: seed-60m
reads 140 MB of float32 weights for every token. Two ways to stream them faster, both kept as
copies beside the weights while generating (the state dict is untouched):

- half (the default): float16 copies of the Linear layers' weights (of those with at least
  HALF_MIN weights; smaller ones stream fast anyway and take the exact path). Half the bytes to
  read; the activations stay float32 and are rounded to float16 only as they enter a product
  (which accumulates in float32). Measured on the 2-core CI CPU (MKL, torch 2.13): seed-60m's
  output layer (100,277 x 256) takes 4.8 ms instead of 8.3 (transposed float32, cold cache), a
  whole token ~1.15-1.2x less time. The next-token distribution moves by at most 0.005 in total
  variation and 0.02 in any log-probability above 1e-4 (tests/test_decoding.py, for logits
  spread twice as wide as a trained cpu-small's; that model itself measured 0.001 and 0.005;
  the errors grow with the spread, relative ~5e-4). The output layer's copy has the mean of its
  rows (and of its bias) subtracted: every logit of a position then moves by the same amount,
  which the softmax ignores, and float16 rounds only the logits' spread, not a common offset
  (GPT-2's logits sit far below zero; in the test, offsets near +-60 rounded as they are moved
  probabilities by 2%). A value beyond float16's range (|x| > 65504) turns into inf, then NaN
  downstream: `GPT.generate_stream` checks each step's logits and redoes a step that is not
  finite exactly (and stays exact for the rest of that generation).
- exact (`generate(..., exact=True)`): float32 throughout, the same products as the plain forward
  summed in another order (last bits differ). `nn.Linear` stores W as (out, in) and computes
  x @ W.T; for one row BLAS then takes `out` dot products of length `in`, and when those rows are
  short (in = d_model = 256) it streams the matrix poorly. A transposed copy (in, out) is read as
  `in` long contiguous runs instead: seed-60m's output layer takes 8 ms instead of 20, a 1024 x 256
  FFN matrix 0.04 ms instead of 0.17. Matrices already wide in their `in` direction (256 x 1024) are
  faster as they are, so only layers with out > in get a transposed copy.

    with decode_layout(model):                # Linear layers use the float16 copies
        logits = model.lm_head(h)
    with decode_layout(model, exact=True):    # float32 copies, wide layers only
        ...
    with installed(model):                    # what generate does: install once per generation,
        with decoding(exact): ...             # then set this thread's mode around each step

The copies are rebuilt when a weight changes in place (an optimizer step bumps its version
counter), so sampling during training stays right. Memory beside seed-60m's 244 MB of weights:
float16 copies 70 MB, transposed copies (exact) 126 MB. Which copies a call uses is decided per thread
(the server generates from several threads over one model); threads outside `decode_layout`, and
anything that needs gradients, get the plain forward. GPUs keep the plain layout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType

import torch
import torch.nn as nn
import torch.nn.functional as F

HALF_MIN = 65_536  # weights: smaller matrices (d_model < 256) stream fast anyway, and the casts would cost more
_BLOCK = 512  # rows transposed at a time: a cache-sized block is ~2x faster than one big transpose
_USERS = threading.Lock()  # guards the per-layer count of decode_layout users
_MODE = threading.local()  # this thread's decoding mode: "half", "exact", or none (plain forward)


def transposed(weight: torch.Tensor) -> torch.Tensor:
    """weight.t().contiguous(), built block by block."""
    out = torch.empty(weight.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
    for i in range(0, weight.shape[0], _BLOCK):
        out[:, i : i + _BLOCK].copy_(weight[i : i + _BLOCK].t())
    return out


def _copy(layer: nn.Linear, kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's (weight, bias) as `kind` ("half" or "transposed"), rebuilt when either changed."""
    w, b = layer.weight, layer.bias
    key = (kind, w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
    cached = layer.__dict__.get(f"_decode_{kind}")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            if kind == "half":
                w, b = w.detach(), None if b is None else b.detach()
                if layer.__dict__.get("_decode_logits"):  # the output layer: round the spread, not the offset
                    w = w - w.mean(0, keepdim=True)
                    b = None if b is None else b - b.mean()
                copies = (w.half(), None if b is None else b.half())
            else:
                copies = (transposed(w.detach()), b)
        cached = (key, copies)
        layer.__dict__[f"_decode_{kind}"] = cached
    return cached[1]


def _forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    mode = getattr(_MODE, "mode", None)
    if mode is None or (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)):
        return F.linear(x, layer.weight, layer.bias)  # not decoding, or training through a generator
    if mode == "half" and layer.weight.numel() >= HALF_MIN:
        w, b = _copy(layer, "half")
        return F.linear(x.to(torch.float16), w, b).to(x.dtype)
    if layer.out_features <= layer.in_features:
        return F.linear(x, layer.weight, layer.bias)
    wt, b = _copy(layer, "transposed")
    rows = x.reshape(-1, x.shape[-1])
    y = torch.addmm(b, rows, wt) if b is not None else rows @ wt
    return y.view(*x.shape[:-1], wt.shape[1])


def cpu_linears(model: nn.Module) -> list[nn.Linear]:
    """The float32 CPU Linear layers that decode_layout serves."""
    return [
        m for m in model.modules()
        if isinstance(m, nn.Linear) and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
    ]


@contextmanager
def installed(model: nn.Module) -> Iterator[None]:
    """While inside, the model's float32 CPU Linear layers route through the decoding forward, which
    uses the copies only in threads whose decoding mode is set (`decoding`) and is the plain forward
    elsewhere. Nested and concurrent uses (several generators over one model) are counted: the
    plain forward comes back when the last one leaves. The copies are kept for the next generation.
    Installing walks the model (~1 ms for seed-60m): do it once per generation, not per token.
    """
    layers = cpu_linears(model)
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        head.__dict__["_decode_logits"] = True  # its outputs only ever go through a softmax
    with _USERS:
        for m in layers:
            users = m.__dict__.get("_decode_users", 0)
            if users == 0:
                m.forward = MethodType(_forward, m)
            m.__dict__["_decode_users"] = users + 1
    try:
        yield
    finally:
        with _USERS:
            for m in layers:
                m.__dict__["_decode_users"] -= 1
                if m.__dict__["_decode_users"] == 0:
                    del m.forward


@contextmanager
def decoding(exact: bool = False) -> Iterator[None]:
    """This thread's decoding mode while inside: float16 copies, or float32 ones with `exact`."""
    previous = getattr(_MODE, "mode", None)
    _MODE.mode = "exact" if exact else "half"
    try:
        yield
    finally:
        _MODE.mode = previous


@contextmanager
def decode_layout(model: nn.Module, exact: bool = False) -> Iterator[None]:
    """Both at once: this thread's calls of the model's CPU Linear layers use the decoding copies."""
    with installed(model), decoding(exact):
        yield
