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
        z = h[r] @ W.T + b                     (rows, V)   the only large tensor, reused per block
        logp = log_softmax(z);  loss += -logp[y]
        g = exp(logp);  g[y] -= 1              (softmax - onehot), in place
        dh[r] = g @ W / n;  dW += g.T @ h[r] / n;  db += g.sum(0) / n

The backward pass then only scales the stored gradients by the incoming gradient (1.0 for a plain
`loss.backward()`). The FLOPs are those of the plain path (2 forward + 4 backward per weight per
row); what goes away is the (B*T, V) memory and its traffic. This is the "fused linear
cross-entropy" of Liger-Kernel (https://arxiv.org/abs/2410.10989) and of Cut Cross-Entropy
(https://arxiv.org/abs/2411.09009), written in plain PyTorch.

Choices:
- Rows ignored by the loss (target -1) are dropped before the matmuls; their gradient is zero.
- The softmax runs in fp32 even when the matmuls run in bf16/fp16 under autocast (GPUs); the
  weight and bias gradients are accumulated in fp32.
- Without autograd (evaluation under `torch.no_grad`) only the loss is computed, block by block.
- The block size keeps one (rows, V) fp32 block near `CHUNK_ELEMENTS` numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 256 * 100_352  # ~100 MB of fp32 logits per block: 256 rows of cl100k_base (measured)


def chunk_rows(vocab_size: int, rows: int, elements: int = CHUNK_ELEMENTS) -> int:
    """How many rows go in one block so that a (rows, V) block holds about `elements` numbers."""
    return max(1, min(rows, elements // max(vocab_size, 1)))


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The matmul precision: autocast's when it is on for this device, else the tensors' own."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


class FusedLinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i @ W.T + b, y_i) over rows with y_i != -1, gradients computed in forward."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, rows_per_chunk):  # noqa: ANN001
        n_rows, d = h.shape
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]
        cdtype = _compute_dtype(h.device, weight.dtype)
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
            b = bias.to(cdtype) if bias is not None else None
            scale = 1.0 / max(n_valid, 1)
            grad_hv = torch.empty(hv.shape, device=h.device, dtype=cdtype) if need_h else None
            acc = torch.float32 if cdtype in (torch.bfloat16, torch.float16) else cdtype  # softmax and sums
            grad_w = torch.zeros(weight.shape, device=h.device, dtype=acc) if need_w else None
            grad_b = torch.zeros(weight.shape[0], device=h.device, dtype=acc) if need_b else None
            loss = torch.zeros((), device=h.device, dtype=acc)
            for start in range(0, n_valid, rows_per_chunk):
                hc = hv[start : start + rows_per_chunk]  # (r, C)
                yc = yv[start : start + rows_per_chunk]  # (r,)
                z = torch.addmm(b, hc, w.t()) if b is not None else hc @ w.t()  # (r, V) logits
                logp = torch.log_softmax(z.to(acc), dim=-1)  # (r, V), fp32 (or fp64)
                del z
                picked = logp.gather(1, yc[:, None])  # (r, 1) log-probability of the right token
                loss -= picked.sum()
                if not (need_h or need_w or need_b):
                    continue
                g = logp.exp_()  # softmax, in place
                g.scatter_add_(1, yc[:, None], torch.full_like(picked, -1.0))  # softmax - onehot
                g = g.to(cdtype)
                if need_h:
                    torch.mm(g, w, out=grad_hv[start : start + rows_per_chunk])
                if need_w:
                    if acc == cdtype:
                        grad_w.addmm_(g.t(), hc, alpha=scale)
                    else:
                        grad_w.add_(g.t() @ hc, alpha=scale)
                if need_b:
                    grad_b.add_(g.sum(0, dtype=acc), alpha=scale)
            if need_h:
                grad_hv.mul_(scale)
                if rows is not None:
                    grad_h = torch.zeros(h.shape, device=h.device, dtype=h.dtype)
                    grad_h.index_copy_(0, rows, grad_hv.to(h.dtype))
                else:
                    grad_h = grad_hv.to(h.dtype)
            else:
                grad_h = None
        ctx.save_for_backward(
            grad_h if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
        )
        return loss / n_valid if n_valid else loss * float("nan")

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_out.to(torch.float32)

        def scaled(g):
            if g is None:
                return None
            return g if bool(scale == 1.0) else g * scale.to(g.dtype)

        return scaled(grad_h), scaled(grad_w), scaled(grad_b), None, None


def _chunked_loss_only(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, rows_per_chunk: int) -> torch.Tensor:
    """The same loss without gradients: block by block, so evaluation never holds (B*T, V) either."""
    total = torch.zeros((), device=h.device, dtype=torch.float32)
    for start in range(0, h.shape[0], rows_per_chunk):
        logits = F.linear(h[start : start + rows_per_chunk], weight, bias)
        total += F.cross_entropy(logits.float(), targets[start : start + rows_per_chunk], ignore_index=-1, reduction="sum")
    n_valid = int((targets != -1).sum())
    return total / n_valid if n_valid else total * float("nan")


def chunked_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T + bias` against `targets` (positions with -1 ignored).

    h: (..., C) hidden states; weight: (V, C); bias: (V,) or None; targets: (...) int64 ids.
    Equal (within float rounding) to
    `F.cross_entropy(F.linear(h, weight, bias).flatten(0, -2).float(), targets.flatten(), ignore_index=-1)`,
    gradients included, without ever holding the (N, V) logits.
    """
    h2 = h.reshape(-1, h.shape[-1])
    y = targets.reshape(-1)
    if y.shape[0] != h2.shape[0]:
        raise ValueError(f"{h2.shape[0]} hidden rows but {y.shape[0]} targets")
    rows = rows_per_chunk or chunk_rows(weight.shape[0], h2.shape[0])
    needs_grad = torch.is_grad_enabled() and (
        h.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if not needs_grad:
        return _chunked_loss_only(h2, weight, bias, y, rows)
    return FusedLinearCrossEntropy.apply(h2, weight, bias, y, rows)
