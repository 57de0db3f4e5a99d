"""What a training run reads, when it is not token shards: the trainer's one data interface.

`psyduck train` reads token shards (`TokenData`). Other recipes reuse the same loop, with all its
guarantees (checkpoints, exact resume, Ctrl-C, the NaN guard, progress, loss curves), by handing
the `Trainer` a `Feed` instead: something that answers the three questions the loop asks of its
data (`Batches`), the tokenizer the run speaks, how to fill the new model's weights at step 0,
the prompt of the text samples, and the command that resumes. `psyduck finetune`
(psyduck/train/finetune.py) is the one user today.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from psyduck.model import GPT
from psyduck.tokenizer import Tokenizer


class Batches(Protocol):
    """Batches for the loop; `TokenData` (token shards) and `ChatBatches` (conversations) are two."""

    def get_batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y int64 (B, T) drawn with `generator` (so a resumed run draws the same); y = -1 is ignored."""
        ...

    def num_tokens(self, split: str) -> int:
        """Targets the loss averages over in `split`."""
        ...

    def num_bytes(self, split: str) -> int:
        """Bytes of text those targets spell (bits per byte = loss / ln 2 * tokens / bytes)."""
        ...


@dataclass(frozen=True)
class Feed:
    """Everything a `Trainer` takes from a recipe other than `psyduck train`'s token shards.

    - batches: the train and val splits;
    - tokenizer: saved into the run as tokenizer.json;
    - init_weights: fills the freshly built model at step 0 (not on resume: the checkpoint does);
    - sample_prompt: (text shown, its ids, stop strings) of the sample written at each evaluation;
    - resume_command: printed when the run stops early.
    """

    batches: Batches
    tokenizer: Tokenizer
    init_weights: Callable[[GPT], None]
    sample_prompt: tuple[str, list[int], tuple[str, ...]]
    resume_command: str
