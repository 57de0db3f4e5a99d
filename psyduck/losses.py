"""The output layer and the loss, computed together ("fused linear cross-entropy").

For a model with a large vocabulary the last step dominates. With the seed's shapes (batch 16 x
context 128 = 2,048 positions, d_model 256, cl100k_base's 100,277 tokens) the output layer is 70% of
the FLOPs, and the plain way to train it,

    logits = h @ W.T + b                  (2048, 100277): 0.8 GB in fp32
    loss = F.cross_entropy(logits, y)     keeps log-softmax (0.8 GB) for backward
    loss.backward()                       d loss / d logits: another 0.8 GB

holds several gigabytes of (B*T, V) tensors, and walks through them again and again in memory that
no cache holds.

The gradient of the mean cross-entropy with respect to the logits has a closed form:

    d loss / d logits[i, :] = (softmax(logits[i, :]) - onehot(y_i)) / n        (n: counted rows)

so for one block of rows we can compute the logits, the loss *and* the gradients with respect to
h, W and b at once, and then forget the block's logits:

    for each block of rows r:
        z = W @ h[r].T + b - z_y               (V, rows)   the only large tensor, one buffer reused
        e = exp(z), s = sum(e)                 per column, in place
        loss += log(s)                         log-sum-exp minus the right logit
        g = e / s - onehot(y)                  (softmax - onehot), never written out: 1/s and the
        dh[r] = g.T @ W / n                    one-hot are folded into the small operands:
        dW += g @ h[r] / n                       g.T @ W = (e.T @ W) / s - W[y]
        db += g.sum(1) / n                       g @ h = e @ (h / s) - scatter(h, y)

The backward pass then only scales the stored gradients by the incoming gradient (1.0 for a plain
`loss.backward()`). The FLOPs are those of the plain path (2 forward + 4 backward per weight per
row); what goes away is the (B*T, V) memory and its traffic. This is the "fused linear
cross-entropy" of Liger-Kernel (https://arxiv.org/abs/2410.10989) and of Cut Cross-Entropy
(https://arxiv.org/abs/2411.09009), written in plain PyTorch.

Choices:
- The softmax is unchanged by subtracting any number from a column of logits; the usual choice is
  the column's max (exp never overflows), which costs two more passes over the block (the max, the
  subtraction). Here it is the right token's logit z_y, one dot product per row computed up front
  and written into the block before the matmul adds onto it: exp(z - z_y) overflows only where some
  logit is ~88 above the right one (a loss of 88+ nats; that block is then redone with the max), and
  the right token's own exp(0) = 1 keeps every sum >= 1 (faster per block: docs/performance.md ("The model, the loss and the presets")).
  Under autocast (float16/bfloat16 matmuls) the max is subtracted as well, so the exps that go
  back into low-precision matmuls stay at most 1.
- Rows ignored by the loss (target -1) are dropped before the matmuls; their gradient is zero.
- The softmax runs in fp32 even when the matmuls run in bf16/fp16 under autocast (GPUs); the
  weight and bias gradients are accumulated in fp32.
- Without autograd (evaluation under `torch.no_grad`) only the loss is computed, block by block.
- The block size keeps one (V, rows) block near `CHUNK_ELEMENTS` numbers (200 MB in fp32).
- Soft-capped logits (`model.logit_softcap`: z -> cap * tanh(z / cap)) take their own block step,
  `_capped_block`: the cap's slope 1 - tanh² multiplies the gradient number by number, so there
  the gradient is written out in the block (with a second buffer for the slope, and blocks of
  half the rows) instead of being folded into the small operands.

How a caller picks it: `train.loss` (auto | fused | plain) names the choice, `make_loss` resolves it
once for a device, and the model takes the result, `model(idx, targets, loss=...)`. Both kinds are
an `OutputLoss`: (h, output layer, targets) -> (logits or None, mean loss). `plain_loss` is the
seed's (logits kept); a `FusedLoss` owns the memory its blocks reuse, so whoever makes one owns it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from psyduck.config import LossChoice

CHUNK_ELEMENTS = 512 * 100_352  # numbers in one (V, rows) block: 512 rows of cl100k_base (measured)

class OutputLoss(Protocol):
    """(hidden states (..., C), the output layer, targets (...), the model's logit soft-cap (0: none))
    -> (logits (..., V) or None, mean loss)."""

    def __call__(
        self, h: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, softcap: float = 0.0
    ) -> tuple[torch.Tensor | None, torch.Tensor]: ...


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): about the logits themselves near 0, never beyond +-cap (0: unchanged).

    Gemma 2's and modded-nanogpt's guard against over-confidence: a logit can only approach the
    cap, so the loss cannot be driven down by making logits ever larger.
    """
    return cap * torch.tanh(logits / cap) if cap else logits


def plain_loss(
    h: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, softcap: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's way: all the logits (B, T, V), then `F.cross_entropy` on them (in fp32)."""
    logits = soft_cap(head(h), softcap)  # (B, T, V)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
    return logits, loss


class BlockBuffer:
    """The memory for one (V, rows) block of logits, kept from one call to the next on CPUs.

    A fresh 200 MB block costs a training step page faults on a CPU (the kernel maps and zeroes
    every page before the matmul can write it); GPUs have PyTorch's caching allocator for that, so
    there each call simply allocates. The buffer grows to the largest block asked for and lives as
    long as its owner.
    """

    def __init__(self) -> None:
        self.flat: torch.Tensor | None = None

    def take(self, v: int, r: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A (v, r) tensor to write one block's logits into (its old contents are garbage)."""
        if device.type != "cpu":
            return torch.empty(v, r, device=device, dtype=dtype)
        if self.flat is None or self.flat.dtype != dtype or self.flat.numel() < v * r:
            self.flat = None  # drop the old one before allocating the new
            self.flat = torch.empty(v * r, dtype=dtype)
        return self.flat[: v * r].view(v, r)


class FusedLoss:
    """The output layer and the cross-entropy computed together, a block of rows at a time.

    An `OutputLoss` that returns no logits: the (B, T, V) tensor never exists. It keeps its
    `BlockBuffer`s (the logits; the cap's slope, used only with a soft-cap), so make one per
    training (or evaluation) loop and pass it to every call.
    """

    def __init__(self) -> None:
        self.buffer = BlockBuffer()
        self.slopes = BlockBuffer()

    def __call__(
        self, h: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, softcap: float = 0.0
    ) -> tuple[None, torch.Tensor]:
        loss = fused_cross_entropy(
            h, head.weight, head.bias, targets, buffer=self.buffer, softcap=softcap, slope_buffer=self.slopes
        )
        return None, loss


def make_loss(choice: "LossChoice", device: torch.device) -> OutputLoss:
    """The loss `train.loss` names, resolved for this device: a `FusedLoss`, or `plain_loss`.

    "auto" picks by device, as measured (docs/performance.md ("The model, the loss and the presets")): on CPUs the fused loss trains
    faster in far less memory; on GPUs torch.compile fuses the plain full-logits loss into a few
    kernels, while the fused loop syncs with the host and breaks the compiled graph. Pick "fused"
    on a GPU when the (B*T, V) logits do not fit in its memory.
    """
    fused = choice == "fused" or (choice == "auto" and device.type == "cpu")
    return FusedLoss() if fused else plain_loss


def chunk_rows(vocab_size: int, rows: int, elements: int = CHUNK_ELEMENTS) -> int:
    """How many rows go in one block so that a (V, rows) block holds about `elements` numbers."""
    return max(1, min(rows, elements // max(vocab_size, 1)))


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The matmul precision: autocast's when it is on for this device, else the tensors' own."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


def _shifted_logits(
    w: torch.Tensor, hc: torch.Tensor, b: torch.Tensor | None, shift: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """out = w @ hc.T + b - shift, shape (V, r) with one shift per column: the bias and the shift are
    written first and the product is accumulated onto them, so no pass over the block is added."""
    if b is not None:
        torch.sub(b, shift.to(out.dtype), out=out)  # (V, 1) - (r,) -> (V, r)
    else:
        out.copy_(shift.to(out.dtype).neg().expand(out.shape))
    return out.addmm_(w, hc.t())


def _fused(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, rows_per_chunk: int,
    buffer: BlockBuffer, need_h: bool, need_w: bool, need_b: bool, softcap: float = 0.0,
    slopes: BlockBuffer | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The mean loss, and (unless not needed) its gradients w.r.t. h, W and b (None where not needed).

    Each block is held vocabulary-major, z = W @ h[r].T of shape (V, rows): on the CPUs we measured,
    MKL runs this matmul (and dW = g @ h[r]) markedly faster than the (rows, V) orientation, and the
    softmax is then a max, an exp and a sum down the columns.

    One long function on purpose: it is the block loop of the module docstring, step for step, and
    every step reads the same dozen per-call tensors (the block, its shift, 1/sum, the gradient
    accumulators); split up, each piece would take them all as arguments.
    """
    n_rows = h.shape[0]
    cdtype = _compute_dtype(h.device, weight.dtype)
    acc = torch.float32 if cdtype in (torch.bfloat16, torch.float16) else cdtype  # softmax and sums
    with torch.autocast(h.device.type, enabled=False):
        valid = targets != -1
        n_valid = int(valid.sum())
        rows = None
        if n_valid < n_rows:  # drop the ignored rows once, up front
            rows = valid.nonzero().squeeze(1)
            hv, yv = h.index_select(0, rows), targets.index_select(0, rows)
        else:
            hv, yv = h, targets
        hv = hv.to(cdtype)
        w = weight.to(cdtype)
        b = bias.to(cdtype)[:, None] if bias is not None else None  # (V, 1)
        scale = 1.0 / max(n_valid, 1)
        grad_hv = torch.empty(hv.shape, device=h.device, dtype=cdtype) if need_h else None
        low = acc != cdtype  # float16/bfloat16 matmuls under autocast, float32 softmax and sums
        grad_w = None
        if need_w:  # written by the first block's product (float32), or summed into (lower precisions)
            fresh = torch.zeros if low or softcap or not n_valid else torch.empty
            grad_w = fresh(weight.shape, device=h.device, dtype=acc)
        grad_b = torch.zeros(weight.shape[0], device=h.device, dtype=acc) if need_b else None
        loss = torch.zeros((), device=h.device, dtype=acc)
        block = None
        for start in range(0, n_valid, rows_per_chunk):
            hc = hv[start : start + rows_per_chunk]  # (r, C)
            y1 = yv[start : start + rows_per_chunk]  # (r,)
            if block is None or block.shape[1] != hc.shape[0]:  # one buffer, reused by every full block
                block = buffer.take(w.shape[0], hc.shape[0], h.device, cdtype)
            if softcap:  # soft-capped logits: their own block step, the gradient written out
                gh = grad_hv[start : start + rows_per_chunk] if need_h else None
                slope = None
                if need_h or need_w or need_b:
                    slopes = slopes if slopes is not None else BlockBuffer()
                    slope = slopes.take(w.shape[0], hc.shape[0], h.device, acc)
                loss += _capped_block(w, hc, b, y1, block, slope, softcap, acc, scale, gh, grad_w, grad_b)
                continue
            # the right token's logit, one dot product per row, is the shift: exp(z - z_y) never
            # overflows unless some logit is ~88 above the right one (a loss of 88+ nats), and the right
            # token's own exp(0) = 1 keeps every column's sum >= 1
            wy = w.index_select(0, y1)  # (r, C) the right tokens' rows of W
            shift = (wy * hc).sum(1)  # (r,)
            if b is not None:
                shift += b[y1, 0]
            z = _shifted_logits(w, hc, b, shift, block).to(acc)  # (V, r): z - shift
            zy = z.gather(0, y1[None, :]).squeeze(0)  # (r,) the right logit after the shift (~0)
            # under autocast the exps go back into float16/bfloat16 matmuls: shift by the max too, so
            # that each is at most 1 (float16 ends at 65,504)
            top = z.amax(0) if low else 0.0
            e = (z.sub_(top) if low else z).exp_()  # (V, r) in place
            total = e.sum(0)  # (r,)
            if not bool(torch.isfinite(total).all()):  # a logit 88+ above the right one: shift by the max
                z = _shifted_logits(w, hc, b, shift, block).to(acc)
                top = z.amax(0)  # (r,)
                e = z.sub_(top).exp_()  # at most 1
                total = e.sum(0)
            loss += (top + total.log() - zy).sum()  # log-sum-exp minus the right logit, both shifted alike
            if not (need_h or need_w or need_b):
                continue
            # d loss_i / d z_i = e_i / total_i - onehot(y_i): the division and the one-hot are folded
            # into the small operands below, so the (V, r) block is only read, never rewritten again
            inv = total.reciprocal()  # (r,)
            g = e.to(cdtype)
            if need_h:
                gh = grad_hv[start : start + rows_per_chunk]
                torch.mm(g.t(), w, out=gh)  # (r, C)
                gh.mul_(inv.to(cdtype)[:, None]).sub_(wy)
            if need_w:
                if low:  # the 1/n stays out of the low-precision operand, applied in float32
                    grad_w.add_(g @ (hc * inv.to(cdtype)[:, None]), alpha=scale)
                else:
                    hs = hc * (inv * scale)[:, None]  # (r, C): each row scaled by 1 / (total n)
                    if start == 0:
                        torch.mm(g, hs, out=grad_w)  # the first block writes, the others add
                    else:
                        grad_w.addmm_(g, hs)
                grad_w.index_add_(0, y1, hc.to(acc), alpha=-scale)
            if need_b:
                grad_b.add_(e @ inv, alpha=scale)
                grad_b.index_add_(0, y1, torch.ones_like(inv), alpha=-scale)
        grad_h = None
        if need_h:
            grad_hv.mul_(scale)
            if rows is not None:
                grad_h = torch.zeros(h.shape, device=h.device, dtype=h.dtype)
                grad_h.index_copy_(0, rows, grad_hv.to(h.dtype))
            else:
                grad_h = grad_hv.to(h.dtype)
    mean = loss / n_valid if n_valid else loss * float("nan")  # nothing to average: NaN, as F.cross_entropy
    return mean, grad_h, grad_w, grad_b


def _capped_block(
    w: torch.Tensor, hc: torch.Tensor, b: torch.Tensor | None, y1: torch.Tensor, block: torch.Tensor,
    slope: torch.Tensor | None, cap: float, acc: torch.dtype, scale: float,
    gh: torch.Tensor | None, grad_w: torch.Tensor | None, grad_b: torch.Tensor | None,
) -> torch.Tensor:
    """One block of soft-capped logits: its summed loss, and (where `slope` is given) its gradients
    written into `gh` (its rows of dh, scaled later) and added into grad_w and grad_b (times `scale`).

    s = cap * tanh(z / cap) never exceeds the cap, so shifting each column by its max is safe and
    there is no overflow to retry. d s / d z = 1 - tanh² multiplies d loss / d s = softmax(s) -
    onehot(y) number by number, so the gradient g is formed in the block itself; `slope` (V, r)
    holds 1 - tanh² meanwhile. The arguments are the per-call tensors of `_fused`'s loop.
    """
    zero = torch.zeros(hc.shape[0], device=hc.device, dtype=block.dtype)
    t = _shifted_logits(w, hc, b, zero, block).to(acc).div_(cap).tanh_()  # (V, r) tanh(z / cap)
    if slope is not None:
        torch.mul(t, t, out=slope).neg_().add_(1.0)
    s = t.mul_(cap)  # the capped logits
    top = s.amax(0)  # (r,)
    sy = s.gather(0, y1[None, :]).squeeze(0)  # (r,) the right tokens' capped logits
    e = s.sub_(top).exp_()  # at most 1
    total = e.sum(0)
    piece = (top + total.log() - sy).sum()
    if slope is None:
        return piece
    g = e.mul_(total.reciprocal())  # softmax
    g.scatter_add_(0, y1[None, :], torch.full((1, y1.shape[0]), -1.0, device=g.device, dtype=g.dtype))
    g.mul_(slope)  # (softmax - onehot) * (1 - tanh²) = d loss / d z
    gc = g.to(w.dtype)
    if gh is not None:
        torch.mm(gc.t(), w, out=gh)  # (r, C)
    if grad_w is not None:
        if gc.dtype == grad_w.dtype:
            grad_w.addmm_(gc, hc, alpha=scale)
        else:  # float16/bfloat16 operands, summed in float32
            grad_w.add_(gc @ hc, alpha=scale)
    if grad_b is not None:
        grad_b.add_(g.sum(1), alpha=scale)
    return piece


class _FusedCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i @ W.T + b, y_i) over rows with y_i != -1, its gradients computed in forward."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, rows_per_chunk, buffer, softcap, slopes):  # noqa: ANN001
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        loss, grad_h, grad_w, grad_b = _fused(
            h, weight, bias, targets, rows_per_chunk, buffer, need_h, need_w, need_b, softcap, slopes
        )
        ctx.save_for_backward(
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
        )
        return loss

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        grads = []
        one = bool(grad_out == 1.0)  # a plain loss.backward(): the stored gradients are the answer
        for g in ctx.saved_tensors:
            grads.append(g if g is None or one else g * grad_out.to(g.dtype))
        return (*grads, None, None, None, None, None)


@torch.compiler.disable  # data-dependent Python (row counts, block loop): keep it out of torch.compile graphs
def fused_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    rows_per_chunk: int | None = None,
    buffer: BlockBuffer | None = None,
    softcap: float = 0.0,
    slope_buffer: BlockBuffer | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T + bias` against `targets` (positions with -1 ignored),
    the logits soft-capped first when `softcap` > 0 (`soft_cap`).

    h: (..., C) hidden states; weight: (V, C); bias: (V,) or None; targets: (...) int64 ids.
    Equal (within float rounding) to
    `F.cross_entropy(F.linear(h, weight, bias).flatten(0, -2).float(), targets.flatten(), ignore_index=-1)`,
    gradients included, without ever holding the (N, V) logits. `buffer`: the caller's memory for
    the blocks (a fresh one, used for this call only, when None); `slope_buffer` likewise, for the
    cap's slope.
    """
    h2 = h.reshape(-1, h.shape[-1])
    y = targets.reshape(-1)
    if y.shape[0] != h2.shape[0]:
        raise ValueError(f"{h2.shape[0]} hidden rows but {y.shape[0]} targets")
    elements = CHUNK_ELEMENTS // 2 if softcap else CHUNK_ELEMENTS  # capped: two (V, rows) blocks
    rows = rows_per_chunk or chunk_rows(weight.shape[0], h2.shape[0], elements)
    needs_grad = torch.is_grad_enabled() and (
        h.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    buffer = buffer if buffer is not None else BlockBuffer()
    if not needs_grad:  # evaluation: the loss alone, block by block
        return _fused(h2, weight, bias, y, rows, buffer, False, False, False, softcap)[0]
    slopes = slope_buffer if slope_buffer is not None else BlockBuffer()
    return _FusedCrossEntropy.apply(h2, weight, bias, y, rows, buffer, softcap, slopes)
