"""Faster one-token steps on CPUs: wide weight matrices laid out for a single row.

Generating feeds one token at a time, so every weight matrix meets a single row per step (a
matrix-vector product), and the step is bound by how fast the weights stream from memory.
`nn.Linear` stores W as (out, in) and computes x @ W.T; for one row BLAS then takes `out` dot
products of length `in`, and when those rows are short (in = d_model = 256) it streams the matrix
poorly. A transposed copy (in, out) is read as `in` long contiguous runs instead. Measured on the
2-core CI CPU (fp32, MKL, torch 2.13), one row times seed-60m's output layer (100,277 x 256) takes
8 ms instead of 20, and times a 1024 x 256 FFN matrix 0.04 ms instead of 0.17; matrices that are
already wide in their `in` direction (256 x 1024) are faster as they are, so only layers with
out > in get a copy.

    with decode_layout(model):      # inside generate: wide Linear layers use the copies
        logits = model.lm_head(h)   # same products, summed in another order (last bits differ)

The copies live beside the weights (not in the state dict) and are rebuilt when a weight changes
in place (an optimizer step bumps its version counter), so sampling during training stays right.
They cost memory: for seed-60m, 126 MB beside 244 MB of weights. GPUs keep the plain layout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType

import torch
import torch.nn as nn
import torch.nn.functional as F

_BLOCK = 512  # rows transposed at a time: a cache-sized block is ~2x faster than one big transpose
_USERS = threading.Lock()  # the server generates from several threads over one model


def transposed(weight: torch.Tensor) -> torch.Tensor:
    """weight.t().contiguous(), built block by block."""
    out = torch.empty(weight.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
    for i in range(0, weight.shape[0], _BLOCK):
        out[:, i : i + _BLOCK].copy_(weight[i : i + _BLOCK].t())
    return out


def _weight_t(layer: nn.Linear) -> torch.Tensor:
    """The layer's transposed weight, rebuilt if the weight was replaced or changed in place."""
    w = layer.weight
    key = (w.data_ptr(), w._version)
    cached = layer.__dict__.get("_decode_wt")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, transposed(w.detach()))
        layer.__dict__["_decode_wt"] = cached
    return cached[1]


def _forward_t(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad):
        return F.linear(x, layer.weight, layer.bias)  # training through a generator: keep autograd's path
    rows = x.reshape(-1, x.shape[-1])
    wt = _weight_t(layer)
    y = torch.addmm(layer.bias, rows, wt) if layer.bias is not None else rows @ wt
    return y.view(*x.shape[:-1], wt.shape[1])


def wide_linears(model: nn.Module) -> list[nn.Linear]:
    """The CPU Linear layers that gain from the transposed layout (out_features > in_features)."""
    return [
        m for m in model.modules()
        if isinstance(m, nn.Linear) and m.out_features > m.in_features and m.weight.device.type == "cpu"
        and m.weight.dtype == torch.float32
    ]


@contextmanager
def decode_layout(model: nn.Module) -> Iterator[None]:
    """While inside, the model's wide CPU Linear layers multiply by transposed copies.

    Nested and concurrent uses (several generators over one model) are counted: the plain forward
    comes back when the last one leaves. The copies are kept for the next generation.
    """
    layers = wide_linears(model)
    with _USERS:
        for m in layers:
            users = m.__dict__.get("_decode_users", 0)
            if users == 0:
                m.forward = MethodType(_forward_t, m)
            m.__dict__["_decode_users"] = users + 1
    try:
        yield
    finally:
        with _USERS:
            for m in layers:
                m.__dict__["_decode_users"] -= 1
                if m.__dict__["_decode_users"] == 0:
                    del m.forward
