"""Conversations -> training batches whose loss falls only on the assistant's tokens.

Supervised fine-tuning teaches a model to *answer*, not to write questions, so the loss counts
only the tokens the assistant wrote (and its end marker): every other target is -1, which
`GPT.forward` ignores (psyduck/losses.py), so those positions contribute no loss and no gradient.
The model still *reads* the whole conversation; it is only never graded on the user's words.

Conversations are short, so rows are *packed*: whole conversations, shuffled with a fixed seed,
placed one after another into rows of block_size + 1 tokens, each starting with <|endoftext|> as
pretraining documents do. A conversation that would not fit starts the next row; the rest of the
row is padding (<|endoftext|>, target -1). One longer than a row is cut to its first block_size + 1
tokens, and dropped if the cut leaves no assistant token. Attention is not masked between the
conversations in one row, as between documents in pretraining; each starts after <|endoftext|>.

`ChatBatches` answers the trainer's batch questions (psyduck/train/feed.py: `get_batch`,
`num_tokens`, `num_bytes`) with these rows: random rows for training (from the trainer's
generator, so resume is exact), and `iter_rows` in order for an exact held-out loss.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch

from psyduck.chat import ChatTemplate
from psyduck.data.chat_data import ChatSplits, Conversation
from psyduck.errors import PsyDuckError
from psyduck.tokenizer import Tokenizer

SPLITS = ("train", "val")


class PackedSplit:
    """One split's rows: inputs x and targets y, (rows, block_size) int64, y = -1 where not trained."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, trained_bytes: int, cut: int, dropped: int) -> None:
        self.x, self.y = x, y
        self.trained_bytes = trained_bytes
        self.cut, self.dropped = cut, dropped  # conversations cut to fit a row, and dropped entirely


def pack(encoded: list[tuple[list[int], list[int]]], block_size: int, pad_id: int, order_seed: int) -> tuple[list[list[int]], list[list[int]], int, int]:
    """Place conversations (ids, mask) into rows of block_size + 1 tokens, in a seeded random order.

    Returns (row ids, row masks, conversations cut, conversations dropped).
    """
    span = block_size + 1
    order = list(range(len(encoded)))
    random.Random(order_seed).shuffle(order)
    rows: list[list[int]] = []
    masks: list[list[int]] = []
    ids: list[int] = []
    mask: list[int] = []
    cut = dropped = 0
    for i in order:
        conv_ids, conv_mask = encoded[i]
        if len(conv_ids) > span:
            conv_ids, conv_mask = conv_ids[:span], conv_mask[:span]
            cut += 1
        if not any(conv_mask[1:]):  # the first token is never a target
            dropped += 1
            continue
        if len(ids) + len(conv_ids) > span:
            rows.append(ids + [pad_id] * (span - len(ids)))
            masks.append(mask + [0] * (span - len(mask)))
            ids, mask = [], []
        ids, mask = ids + conv_ids, mask + conv_mask
    if ids:
        rows.append(ids + [pad_id] * (span - len(ids)))
        masks.append(mask + [0] * (span - len(mask)))
    return rows, masks, cut, dropped


class ChatBatches:
    """Both splits of a chat data set, encoded with `template` and packed for `block_size`."""

    def __init__(self, splits: ChatSplits, tokenizer: Tokenizer, template: ChatTemplate, block_size: int, seed: int = 0) -> None:
        self.block_size = block_size
        self.packed: dict[str, PackedSplit] = {}
        for split in SPLITS:
            self.packed[split] = self._pack(splits.split(split), tokenizer, template, seed)
            if len(self.packed[split].x) == 0:
                raise PsyDuckError(
                    f"the chat data's {split} split has no conversation with an assistant token within the "
                    f"context ({block_size} tokens); give shorter conversations or more of them"
                )

    def _pack(self, conversations: list[Conversation], tokenizer: Tokenizer, template: ChatTemplate, seed: int) -> PackedSplit:
        """Encode and pack one split; targets are the next token where it is trained, else -1."""
        encoded = template.encode_conversations(tokenizer, conversations)
        rows, masks, cut, dropped = pack(encoded, self.block_size, tokenizer.eot_id, seed)
        window = torch.tensor(rows, dtype=torch.int64).reshape(-1, self.block_size + 1)
        trained = torch.tensor(masks, dtype=torch.bool).reshape(-1, self.block_size + 1)[:, 1:]
        x, y = window[:, :-1].contiguous(), window[:, 1:].clone()
        y[~trained] = -1
        trained_bytes = len(tokenizer.decode(y[trained].tolist()).encode("utf-8"))
        return PackedSplit(x, y, trained_bytes, cut, dropped)

    def describe(self) -> str:
        """One line on what was packed (for the log)."""
        parts = []
        for split, p in self.packed.items():
            note = f", {p.cut} cut to fit" if p.cut else ""
            note += f", {p.dropped} dropped (no answer within the context)" if p.dropped else ""
            parts.append(f"{split}: {len(p.x):,} rows of {self.block_size} tokens, {self.num_tokens(split):,} trained{note}")
        return "; ".join(parts)

    def get_batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` random rows of `split`: x, y int64 (B, T), y = -1 where the loss does not look."""
        if block_size != self.block_size:
            raise ValueError(f"packed for block_size {self.block_size}, asked for {block_size}")
        p = self.packed[split]
        index = torch.randint(len(p.x), (batch_size,), generator=generator)
        return p.x[index], p.y[index]

    def iter_rows(self, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every row of `split` once, in order, `batch_size` at a time (an exact held-out loss)."""
        p = self.packed[split]
        for start in range(0, len(p.x), batch_size):
            yield p.x[start : start + batch_size], p.y[start : start + batch_size]

    def num_tokens(self, split: str) -> int:
        """Trained targets in `split` (the tokens the loss is a mean over)."""
        return int((self.packed[split].y != -1).sum())

    def num_bytes(self, split: str) -> int:
        """UTF-8 bytes of those targets' text, for bits per byte of the assistant's answers."""
        return self.packed[split].trained_bytes
