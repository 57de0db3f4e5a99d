"""The output layer and the loss, computed together.

For a model with a large vocabulary the last step dominates: the seed's (16 x 128) x 256 hidden
states times a 256 x 100,277 output matrix give a 0.8 GB logits tensor in fp32, and its backward
pass another. Fusing the output layer with the cross-entropy lets us avoid keeping it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chunked_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T + bias` against `targets` (positions with -1 ignored).

    Reference version: one matmul, one cross-entropy.
    """
    logits = F.linear(h.reshape(-1, h.shape[-1]), weight, bias)
    return F.cross_entropy(logits.float(), targets.reshape(-1), ignore_index=-1)
