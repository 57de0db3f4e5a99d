"""The KV cache: every block's keys and values for the tokens seen so far.

Generating one token at a time, the model would otherwise re-run the whole context for every new
token. A token's key and value in a block depend only on the tokens up to it, so they can be kept:
the prompt runs once, then each step feeds only the newest token, which attends to every cached
key and value (nanoGPT re-runs the window; nanochat, litgpt and Hugging Face keep a cache like this).

The model's attention calls `cache.append(k, v)` on its block's `LayerCache` and attends to what
that returns; `GPT.forward(idx, cache=...)` starts the positions at `cache.length` and advances it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from psyduck.model import GPT


class LayerCache:
    """One block's keys and values so far, in preallocated buffers (B, Hkv, block_size, hs)."""

    keep = None  # every row has the same length: attention's own causal mask applies (the model reads this)

    def __init__(self, owner: KVCache, k: torch.Tensor, v: torch.Tensor) -> None:
        self.owner, self.k, self.v = owner, k, v

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' k, v (B, Hkv, T, hs); return all so far (B, Hkv, length + T, hs)."""
        start, end = self.owner.length, self.owner.length + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """Keys and values of every block for the tokens seen so far; `length` counts them.

    Setting `length` back forgets the positions after it (the next `append` overwrites them):
    `reset()` empties the cache, and a step redone after a float16 overflow rewinds it.
    """

    def __init__(self, n_layer: int, shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype) -> None:
        self.length = 0
        self.layers = [
            LayerCache(self, torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(n_layer)
        ]

    @classmethod
    def for_model(cls, model: GPT, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """An empty cache for `batch` rows of `model`, a whole window (block_size positions) long."""
        c = model.config
        return cls(c.n_layer, (batch, c.kv_heads, c.block_size, c.head_size), device, dtype)

    def layer(self, i: int) -> LayerCache:
        return self.layers[i]

    def reset(self) -> None:
        self.length = 0
