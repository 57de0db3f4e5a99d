"""Token shards -> training batches: random windows for learning, ordered windows for evaluation.

A GPT learns next-token prediction: given tokens t[i : i+T] it predicts t[i+1 : i+T+1] at every
position at once. So a batch is B windows of T+1 consecutive tokens cut from the token stream;
x is each window without its last token and y is each window without its first (y is x shifted by
one). Windows may cross document boundaries: the end-of-text token between documents tells the
model that what follows is unrelated.

Design choices:
- The shards are memory-mapped (`np.memmap`, read-only): the operating system pages in only the
  windows we touch, so a dataset larger than RAM still works and start-up is instant. A split of
  several shards is read as one stream without joining them: a window's positions are looked up
  in the shard that holds each (a window may straddle two). Only `tokens(split)`, for inspection,
  builds the whole split in memory.
- Training windows start at positions from `torch.randint(..., generator=g)`: saving
  `g.get_state()` in a checkpoint and restoring it resumes the exact same batch sequence.
  (`train.sampling=shuffle` visits every window once an epoch instead: epochs.py.)
- Data-parallel training draws one global batch from one generator and gives each rank its rows
  (see the trainer), so the loader knows nothing about ranks. (Pass a CPU generator.)
- Splits are whatever meta.json lists: train and val always, test for sources with their own
  (WikiText).
- Evaluation walks the split in order, so a loss is exact and repeatable. `iter_eval_batches`:
  non-overlapping windows (every token after the first predicted once, a last partial window
  dropped; quick). `iter_scored_windows`: every token of the split predicted exactly once, the first
  from an end-of-text token, with a sliding window whose `stride` trades compute for context (what
  published perplexities use; see evaluate.py).
- One vectorized gather per batch: an index matrix (B, T+1) picks every token at once, then the
  uint16/uint32 ids are widened to int64, the type `nn.Embedding` and cross-entropy expect.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from psyduck.data.shards import DTYPES, FORMAT
from psyduck.errors import PsyDuckError
from psyduck.tokenizer import Tokenizer, load_tokenizer


class TokenData:
    """A prepared data folder (see prepare.py): its meta.json and memory-mapped token shards."""

    def __init__(self, folder: str | Path, prepare: str | None = None) -> None:
        """`prepare`: the command that writes `folder`, which its errors name (a config's
        `DataConfig.prepare_command()`; by default the embedded corpus's)."""
        self.folder = Path(folder)
        again = f"run `{prepare or f'psyduck prepare wiki-vital --out {self.folder}'}`"
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
            dtype = DTYPES[self.meta["dtype"]]
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
        # where each shard starts in its split's token stream, plus the end: [0, len0, len0+len1, ...]
        self._bounds = {name: np.cumsum([0, *(len(m) for m in maps)]) for name, maps in self._shards.items()}

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

    def num_words(self, split: str) -> int:
        """Words of the split's original text, as WikiText's papers count them (see data/wikitext.py)."""
        self._check_split(split)
        words = self.meta["splits"][split].get("words")
        if words is None:
            raise PsyDuckError(
                f"data at {self.folder} has no word counts (source {self.meta.get('source')!r}); "
                "word-level perplexity needs WikiText data: `psyduck prepare wikitext-103`"
            )
        return int(words)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the data was prepared with (from the folder's tokenizer.json)."""
        return load_tokenizer(self.folder)

    def check_tokenizer(self, tokenizer: str | Tokenizer) -> None:
        """Refuse to use a model whose tokenizer is not the one that made these ids.

        Given a Tokenizer (not just a name), two tokenizers of the same name (say two different
        `bpe-8192` trained on different text) are told apart by their fingerprint.
        """
        tokenizer_name = tokenizer if isinstance(tokenizer, str) else tokenizer.name
        if (
            tokenizer_name == self.tokenizer_name
            and not isinstance(tokenizer, str)
            and tokenizer.fingerprint != self.tokenizer().fingerprint
        ):
            raise PsyDuckError(
                f"data at {self.folder} was prepared with a different {tokenizer_name} tokenizer than the run's "
                "(same name, other vocabulary); prepare the data with the run's tokenizer or start a new run"
            )
        if tokenizer_name != self.tokenizer_name:
            raise PsyDuckError(
                f"data at {self.folder} was prepared with {self.tokenizer_name} but the run uses {tokenizer_name}; "
                f"prepare the data with --tokenizer {tokenizer_name} or start a new run"
            )

    def _take(self, split: str, index: np.ndarray) -> np.ndarray:
        """int64 tokens of `split` at the positions in `index` (any shape), straight from the shards."""
        maps, bounds = self._shards[split], self._bounds[split]
        if len(maps) == 1:
            return maps[0][index].astype(np.int64)
        shard = np.searchsorted(bounds, index, side="right") - 1  # which shard holds each position
        out = np.empty(index.shape, dtype=np.int64)
        for k in np.unique(shard):
            here = shard == k
            out[here] = maps[k][index[here] - bounds[k]]
        return out

    def check_fits(self, split: str, block_size: int) -> None:
        """Refuse a split too short for one training window of block_size+1 tokens (x and y)."""
        self._check_split(split)
        n = self.num_tokens(split)
        if n < block_size + 1:
            raise PsyDuckError(
                f"the {split} split has {n} tokens, fewer than one context window "
                f"(block_size+1 = {block_size + 1}); use more text or a smaller --block-size"
            )

    def _gather(self, split: str, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (B, T) int64 from windows tokens[s : s+T+1] for each start s."""
        window = torch.from_numpy(self._take(split, starts[:, None] + np.arange(block_size + 1)))  # (B, T+1)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()  # (B, T), (B, T)

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` random windows of the split: x, y int64 (B, T)."""
        self.check_fits(split, block_size)
        starts = torch.randint(self.num_tokens(split) - block_size, (batch_size,), generator=generator)
        return self._gather(split, starts.numpy(), block_size)

    def windows(self, split: str, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows at the given starts (train.sampling=shuffle's, from epochs.py): x, y int64 (B, T)."""
        self.check_fits(split, block_size)
        return self._gather(split, starts, block_size)

    def iter_eval_batches(
        self, split: str, batch_size: int, block_size: int, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows in order, batch_size at a time (the last batch may be smaller)."""
        self.check_fits(split, block_size)
        n_windows = (self.num_tokens(split) - 1) // block_size  # window i predicts tokens i*T+1 .. i*T+T
        for b, first in enumerate(range(0, n_windows, batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            starts = np.arange(first, min(first + batch_size, n_windows)) * block_size
            yield self._gather(split, starts, block_size)

    def iter_scored_windows(
        self, split: str, batch_size: int, block_size: int, stride: int | None = None, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Windows that predict every token of the split exactly once: x, y int64 (B, T), where
        y is -1 at positions already predicted by an earlier window (the loss ignores -1).

        The split is read as [eot] + tokens, so its first token is predicted from the end-of-text
        token (as after any document boundary). Window k starts at min(k * stride, N - T) and scores
        only the targets no earlier window scored: with stride = T (the default) the windows do not
        overlap; with stride S < T each token after the first window sees at least T - S tokens of
        context, at T / S times the compute (Hugging Face's "perplexity of fixed-length models").
        A split shorter than one window gives one shorter window.
        """
        stride = block_size if stride is None else stride
        if not 1 <= stride <= block_size:
            raise PsyDuckError(f"stride must be between 1 and the context length {block_size}, got {stride}")
        self._check_split(split)
        n = self.num_tokens(split)  # targets: positions 1..n of the sequence [eot] + tokens
        span = min(block_size, n)
        last = n - span  # start of the final window
        starts = np.minimum(np.arange(0, last + stride, stride), last)
        starts = starts[: int(np.searchsorted(starts, last)) + 1]  # stop at the first window that reaches the end
        prev_end = np.concatenate([[0], starts[:-1] + span])  # last position scored before each window
        offsets = np.arange(span + 1)
        for b, first in enumerate(range(0, len(starts), batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            s, done = starts[first : first + batch_size], prev_end[first : first + batch_size]
            pos = s[:, None] + offsets  # (B, T+1) positions in [eot] + tokens
            window = self._take(split, np.maximum(pos - 1, 0))
            window[pos == 0] = self.eot_id
            x, y = torch.from_numpy(window[:, :-1].copy()), torch.from_numpy(window[:, 1:].copy())  # (B, T) each
            y[torch.from_numpy(pos[:, 1:] <= done[:, None])] = -1  # scored by an earlier window
            yield x, y
