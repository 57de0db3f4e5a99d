"""Training windows in shuffled epochs: each window of the split once an epoch, in a random order.

The default sampler (`train.sampling=random`, loader.py) starts each window at a random position,
with replacement: over the 4 epochs a 10-minute cpu-small run makes of the embedded corpus, a token
is seen Poisson(4) times, so some are seen 8 times and ~2% never. `train.sampling=shuffle` is the
without-replacement order most trainers use: each epoch cuts the split into non-overlapping
windows of T+1 tokens from a random offset (a new one each epoch, so window edges move) and visits
them in a random permutation.

Window k of a run is a pure function of (seed, k): the trainer passes how many windows it drew
before, so a resumed run draws the very same windows with nothing saved in the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch


class EpochOrder:
    """Window starts for a split of `n_tokens` tokens and windows of `block_size`+1 tokens."""

    def __init__(self, n_tokens: int, block_size: int, seed: int) -> None:
        if n_tokens < block_size + 1:  # TokenData.check_fits tells users; this guards other callers
            raise ValueError(f"{n_tokens} tokens hold no window of {block_size + 1}")
        self.block_size, self.seed = block_size, seed
        # leave a window's worth of slack where the split allows, so the offset can move a whole window
        self.per_epoch = max((n_tokens - block_size) // block_size, 1)
        self.max_offset = min(n_tokens - 1 - self.per_epoch * block_size, block_size - 1)
        self._epochs: dict[int, np.ndarray] = {}

    def epoch(self, e: int) -> np.ndarray:
        """The window starts of epoch `e`, in the order they are visited."""
        if e not in self._epochs:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            offset = int(torch.randint(self.max_offset + 1, (1,), generator=g))
            order = torch.randperm(self.per_epoch, generator=g).numpy()
            self._epochs = {k: v for k, v in self._epochs.items() if k >= e - 1}  # asked for in order: keep two
            self._epochs[e] = offset + order.astype(np.int64) * self.block_size
        return self._epochs[e]

    def starts(self, first: int, count: int) -> np.ndarray:
        """The starts of windows first .. first+count-1 of the run (int64, shape (count,))."""
        k = np.arange(first, first + count, dtype=np.int64)
        epochs, within = np.divmod(k, self.per_epoch)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            here = epochs == e
            out[here] = self.epoch(int(e))[within[here]]
        return out
