"""Faster one-token steps on CPUs: an explicit twin of the model, with weight copies made for
multiplying a single row.

Generating feeds one token at a time, so every weight matrix meets one row per step (a
matrix-vector product), and the step is bound by how fast the weights stream from memory.
`DecodeWeights.build(model)` makes, once per generation (or once for a server's lifetime), a twin
of the model: the same modules and the *same* parameter tensors, except that its float32 CPU
`Linear` layers are swapped for layers that hold copies laid out for that product:

- `HalfLinear` (the default): float16 copies, half the bytes to read. The activations stay
  float32 and are rounded to float16 only as they enter a product (which accumulates in float32).
  Only matrices of at least HALF_MIN weights get one; smaller ones stream fast anyway. The output
  layer's copy has the mean of its rows (and of its bias) subtracted: every logit of a position
  then moves by the same amount, which the softmax ignores, so float16 rounds only the logits'
  spread, not a common offset (GPT-2's logits sit far below zero); not under a logit soft-cap,
  whose tanh a common offset does change. Next-token probabilities stay within 0.005 total
  variation of float32's (tests/test_decoding.py). A value beyond float16's range turns into inf;
  the decode loop then redoes that step with exact weights.
- `TransposedLinear` (`exact=True`): float32 throughout. `nn.Linear` stores W as (out, in); for
  one row BLAS then takes `out` short dot products and streams the matrix poorly, so layers with
  out > in get a transposed (in, out) copy, read as long contiguous runs. Same products, summed in
  another order (the last bits differ).
- `PackedLinear` (`batched=True`, a batching server; float32 too): a step multiplies a few rows
  (one per request), where the BLAS that torch calls is at its worst on this CPU (cpu-small's
  output layer: 2 rows take 2-4x one row's time). oneDNN's product over a copy in its own packed
  layout takes 2-4 rows in ~1.4x one row's time and 16 in ~4x (1.7-2.3x faster than BLAS there),
  so layers of at least PACKED_MIN weights get one for 2 rows or more; one row keeps the path above.

The twin runs the model's own `forward` (so it follows every variant the model has), always in
eval mode; the model itself is not touched, so training can go on and threads can share it. The
copies are taken when it is built: after the weights change, build again. GPUs (and non-float32
weights) keep the model's own layers. Timings: docs/performance.md (the "generation" section).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

HALF_MIN = 65_536  # weights: smaller matrices (d_model < 256) stream fast anyway, and the casts would cost more
PACKED_MIN = 262_144  # weights: below, oneDNN's fixed cost per call (~15 us) outweighs its faster product
_BLOCK = 512  # rows transposed at a time: a cache-sized block is ~2x faster than one big transpose


def transposed(weight: torch.Tensor) -> torch.Tensor:
    """weight.t().contiguous(), built block by block."""
    out = torch.empty(weight.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
    for i in range(0, weight.shape[0], _BLOCK):
        out[:, i : i + _BLOCK].copy_(weight[i : i + _BLOCK].t())
    return out


class HalfLinear(nn.Module):
    """A Linear layer over float16 copies of (weight, bias); inputs and outputs keep their dtype."""

    def __init__(self, layer: nn.Linear, centred: bool = False) -> None:
        super().__init__()
        w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
        if centred:  # an output layer: round the logits' spread, not their common offset
            w, b = w - w.mean(0, keepdim=True), None if b is None else b - b.mean()
        self.register_buffer("weight", w.half(), persistent=False)
        self.register_buffer("bias", None if b is None else b.half(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as rows (N, in): a 3-D float16 input whose size-1 batch dim has an odd stride (the last
        # position of a prefill, h[:, -1:]) takes a CPU path that copies the whole weight (~40x slower)
        rows = x.reshape(-1, x.shape[-1]).to(torch.float16)
        return F.linear(rows, self.weight, self.bias).to(x.dtype).view(*x.shape[:-1], self.weight.shape[0])


class TransposedLinear(nn.Module):
    """A Linear layer over a transposed copy of its weight (in, out): x @ W^T + b as x @ Wt + b.

    Only for a few rows: from `WIDE_ROWS` rows on (a batching server's step, a prefill) the model's
    own (out, in) weight, which it still shares, multiplies faster (cpu-small's output layer at 16
    rows: ~1.1 ms against ~1.3 ms on one thread)."""

    WIDE_ROWS = 4

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.weight = layer.weight.detach()  # the model's tensor itself, not a copy
        self.register_buffer("weight_t", transposed(layer.weight.detach()), persistent=False)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] >= self.WIDE_ROWS:
            y = F.linear(rows, self.weight, self.bias)
        else:
            y = torch.addmm(self.bias, rows, self.weight_t) if self.bias is not None else rows @ self.weight_t
        return y.view(*x.shape[:-1], self.weight_t.shape[1])


def onednn_packed(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's packed copy of a float32 (out, in) weight, laid out for products of a few rows; None
    where this torch build has no oneDNN (its private ops are how torch.compile packs weights)."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, 16)
    except (AttributeError, RuntimeError):
        return None


class PackedLinear(nn.Module):
    """A Linear layer for batched decoding: one row through `single` (the layer or its transposed
    twin), 2 rows or more through oneDNN's packed copy of the weight (`onednn_packed`)."""

    def __init__(self, layer: nn.Linear, single: nn.Module, packed: torch.Tensor) -> None:
        super().__init__()
        self.single = single
        self.packed = packed  # an opaque oneDNN tensor: an attribute, not a buffer that .to() would move
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] < 2:
            return self.single(x)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], y.shape[-1])


def decode_layer(layer: nn.Linear, exact: bool, output: bool, batched: bool = False) -> nn.Module:
    """The layer to decode with in place of `layer`: a copy-holding one, or `layer` itself."""
    w = layer.weight
    if w.device.type != "cpu" or w.dtype != torch.float32:
        return layer  # GPUs and low-precision weights: the model's own layout
    if not exact and w.numel() >= HALF_MIN:
        return HalfLinear(layer, centred=output)
    single = TransposedLinear(layer) if layer.out_features > layer.in_features else layer  # wide: streams better
    if batched and w.numel() >= PACKED_MIN and (packed := onednn_packed(w.detach())) is not None:
        return PackedLinear(layer, single, packed)
    return single


@dataclass(frozen=True)
class DecodeWeights:
    """The model to decode with (`net`: a twin, eval mode) and whether it holds float16 copies."""

    net: nn.Module
    exact: bool
    half: bool  # some products are float16: a step's logits must be checked for overflow
    batched: bool = False  # holds packed copies for steps of many rows (implies exact)

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, exact: bool = False, batched: bool = False) -> DecodeWeights:
        """A twin of `model` sharing every parameter and buffer, with its CPU Linear layers swapped;
        `batched` (a server's batch: float32, many rows a step) adds the `PackedLinear` copies.

        Copying the module tree is cheap; the weight copies cost a pass over every weight (for
        seed-60m, a good part of a second on a small CPU): build once per generation, or once and
        pass it to many (`generate(..., weights=)`).
        """
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        net = copy.deepcopy(model, memo=shared).eval()  # new modules, the same tensors
        capped = bool(getattr(getattr(model, "config", None), "logit_softcap", 0.0))
        output = None if capped else getattr(net, "lm_head", None)  # the layer whose copy is centred
        for parent in list(net.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, decode_layer(child, exact or batched, child is output, batched))
        half = any(isinstance(m, HalfLinear) for m in net.modules())
        return cls(net, exact or batched, half, batched)
