"""Token shards -> training batches: random windows for learning, ordered windows for evaluation.

A GPT learns next-token prediction: given tokens t[i : i+T] it predicts t[i+1 : i+T+1] at every
position at once. So a batch is B windows of T+1 consecutive tokens cut from the token stream;
x is each window without its last token and y is each window without its first (y is x shifted by
one). Windows may cross document boundaries: the end-of-text token between documents tells the
model that what follows is unrelated.

Design choices:
- The shards are memory-mapped (`np.memmap`, read-only): the operating system pages in only the
  windows we touch, so a dataset larger than RAM still works and start-up is instant.
  (With several shards, `tokens` concatenates them into memory once, on first use.)
- Training windows start at positions from `torch.randint(..., generator=g)`: saving
  `g.get_state()` in a checkpoint and restoring it resumes the exact same batch sequence.
- For data-parallel training, rank r of w samples only from the r-th contiguous 1/w of the split,
  so ranks never see the same window in one step. (Pass a CPU generator.)
- Evaluation walks the split in order with non-overlapping windows, so a validation loss is exact
  and repeatable (every token after the first is predicted once; a last partial window is dropped).
- One vectorized gather per batch: an index matrix (B, T+1) picks every token at once, then the
  uint16/uint32 ids are widened to int64, the type `nn.Embedding` and cross-entropy expect.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from psyduck.errors import PsyDuckError
from psyduck.tokenizer import Tokenizer, load_tokenizer

FORMAT = 1  # the meta.json format this loader reads (see prepare.py)


class TokenData:
    """A prepared data folder (see prepare.py): its meta.json and memory-mapped token shards."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        again = f"run `psyduck prepare wiki-vital --out {self.folder}`"
        if not self.folder.is_dir():
            raise PsyDuckError(f"data folder not found: {self.folder}; {again} first")
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise PsyDuckError(f"data folder {self.folder} has no meta.json (prepare did not finish); {again}")
        try:
            self.meta: dict = json.loads(meta_path.read_text(encoding="utf-8"))
            self.tokenizer_name: str = self.meta["tokenizer"]
            self.vocab_size: int = int(self.meta["vocab_size"])
            self.eot_id: int = int(self.meta["eot_id"])
            dtype = np.dtype({"uint16": "<u2", "uint32": "<u4"}[self.meta["dtype"]])
            splits = {name: (list(s["shards"]), int(s["tokens"])) for name, s in self.meta["splits"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise PsyDuckError(f"data folder {self.folder} has a corrupt meta.json ({e!r}); {again}") from None
        if self.meta.get("format") != FORMAT:
            raise PsyDuckError(
                f"data folder {self.folder} has meta.json format {self.meta.get('format')}, "
                f"this psyduck reads format {FORMAT}; {again}"
            )
        self._shards: dict[str, list[np.memmap]] = {}
        for name, (shards, tokens) in splits.items():
            maps = []
            for shard in shards:
                path = self.folder / shard
                if not path.is_file() or path.stat().st_size % dtype.itemsize or path.stat().st_size == 0:
                    raise PsyDuckError(f"shard {path} is missing or damaged; {again}")
                maps.append(np.memmap(path, dtype=dtype, mode="r"))
            if sum(len(m) for m in maps) != tokens:
                raise PsyDuckError(f"the {name} shards in {self.folder} do not match meta.json; {again}")
            self._shards[name] = maps
        self._joined: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_tokens(s):,}" for s in self._shards)
        return f"TokenData({str(self.folder)!r}, {self.tokenizer_name}, tokens: {sizes})"

    def _check_split(self, split: str) -> None:
        if split not in self._shards:
            raise PsyDuckError(f"unknown split '{split}'; use one of: {', '.join(self._shards)}")

    def tokens(self, split: str) -> np.ndarray:
        """Every token of a split as one 1-D array (the memmap itself when there is one shard)."""
        self._check_split(split)
        if split not in self._joined:
            maps = self._shards[split]
            self._joined[split] = maps[0] if len(maps) == 1 else np.concatenate(maps)
        return self._joined[split]

    def num_tokens(self, split: str) -> int:
        self._check_split(split)
        return int(self.meta["splits"][split]["tokens"])

    def num_bytes(self, split: str) -> int:
        """UTF-8 bytes of the split's text: the denominator of bits per byte."""
        self._check_split(split)
        return int(self.meta["splits"][split]["bytes"])

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the data was prepared with (from the folder's tokenizer.json)."""
        return load_tokenizer(self.folder)

    def check_tokenizer(self, tokenizer_name: str) -> None:
        """Refuse to train a model whose tokenizer is not the one that made these ids."""
        if tokenizer_name != self.tokenizer_name:
            raise PsyDuckError(
                f"data at {self.folder} was prepared with {self.tokenizer_name} but the run uses {tokenizer_name}; "
                f"prepare the data with --tokenizer {tokenizer_name} or start a new run"
            )

    def _windows(self, split: str, block_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's part of the split, checked to hold at least one window of block_size+1 tokens."""
        data = self.tokens(split)
        part = len(data) // world_size
        if part < block_size + 1:
            per_rank = f" per rank ({world_size} ranks)" if world_size > 1 else ""
            raise PsyDuckError(
                f"the {split} split has {part} tokens{per_rank}, fewer than one context window "
                f"(block_size+1 = {block_size + 1}); use more text or a smaller --block-size"
            )
        return data[rank * part : (rank + 1) * part]

    @staticmethod
    def _gather(data: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (B, T) int64 from windows data[s : s+T+1] for each start s."""
        index = starts[:, None] + np.arange(block_size + 1)  # (B, T+1)
        window = torch.from_numpy(data[index].astype(np.int64))  # (B, T+1)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()  # (B, T), (B, T)

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` random windows from this rank's part of the split: x, y int64 (B, T)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        data = self._windows(split, block_size, rank, world_size)
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        return self._gather(data, starts.numpy(), block_size)

    def iter_eval_batches(
        self, split: str, batch_size: int, block_size: int, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows in order, batch_size at a time (the last batch may be smaller)."""
        data = self._windows(split, block_size)
        n_windows = (len(data) - 1) // block_size  # window i predicts tokens i*T+1 .. i*T+T
        for b, first in enumerate(range(0, n_windows, batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            starts = np.arange(first, min(first + batch_size, n_windows)) * block_size
            yield self._gather(data, starts, block_size)
