"""Supervised fine-tuning: from a run that continues text to one that answers (`psyduck finetune`).

    psyduck finetune runs/demo --chat wiki-vital-qa --out runs/chat [--max-iters N] [key=value ...]

What happens, in order:
1. The base run's tokenizer gets the chat role markers as special tokens (psyduck/chat.py), and
   the model one new embedding row and one new output row per marker (`grow_rows`). A new row
   starts as the mean of the existing rows (Hewitt 2021, "Initializing new word embeddings for
   pretrained language models"): a random row could give the new tokens huge or tiny logits and
   disturb every prediction at first; the mean makes each an "average token". Old rows are copied
   unchanged, so on ordinary text the model is exactly the base model.
2. The conversations are encoded with the template and packed into rows with the loss on the
   assistant's tokens only (psyduck/data/chat_batches.py).
3. The ordinary `Trainer` runs, fed through `Feed` (psyduck/train/feed.py): a fresh optimizer and
   schedule, evaluation on held-out conversations (so step 0's val loss is the base model's), the
   checkpoints, exact `--resume`, Ctrl-C, the NaN guard, progress and loss curves of every run.

The recipe is the base run's `train` section with `max_iters` = DEFAULT_ITERS, then the user's
flags and key=value on top; the architecture is the base model's (only model.dropout may change).
The new run folder also holds chat_template.json and finetune.json (base run, chat data, and a
fingerprint of the conversations, which `--resume` checks: the same data or no exact resume).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from psyduck.chat import ROLE_MARKERS, ChatTemplate, load_template, marker_template
from psyduck.config import Config, apply_overrides
from psyduck.data.chat_batches import ChatBatches
from psyduck.data.chat_data import ChatSplits, load_chat_data
from psyduck.errors import PsyDuckError
from psyduck.io import write_json_atomic
from psyduck.model import GPT
from psyduck.runs import load_run, read_run_config
from psyduck.tokenizer import Tokenizer, load_tokenizer
from psyduck.train.feed import Feed
from psyduck.train.trainer import Trainer

RECORD = "finetune.json"
DEFAULT_ITERS = 200
CHANGEABLE_MODEL_KEYS = ("dropout", "attention", "vocab_size")  # the rest is the base model's shape
VOCAB_KEYS = ("tok_emb.weight", "lm_head.weight", "lm_head.bias")  # the tensors with one row per token


def grow_rows(t: torch.Tensor, rows: int, first_new: int) -> torch.Tensor:
    """`t` with `rows` rows: rows below `first_new` copied, the others the mean of those."""
    grown = t.new_empty((max(rows, len(t)), *t.shape[1:]))
    grown[: len(t)] = t
    grown[first_new:] = t[:first_new].mean(dim=0)
    return grown


def load_grown(model: GPT, base: GPT, first_new: int) -> None:
    """Fill `model` with `base`'s weights, its vocabulary rows from `first_new` up set to the mean.

    Works for a tied head (one matrix, grown once, as both keys name it) and an untied one,
    with or without the output bias.
    """
    state = base.state_dict()
    rows = model.config.vocab_size
    for key in VOCAB_KEYS:
        if key in state:
            state[key] = grow_rows(state[key], rows, first_new)
    model.load_state_dict(state)


@torch.no_grad()
def held_out_loss(model: GPT, batches: ChatBatches, split: str = "val", batch_size: int = 16) -> float:
    """Mean cross-entropy over every assistant token of `split`, each counted once (exact, not sampled)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches.iter_rows(split, batch_size):
        n = int((y != -1).sum())
        _, loss = model(x.to(device), y.to(device))
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / count


def data_fingerprint(splits: ChatSplits) -> str:
    """A hash of the conversations, so `--resume` can tell whether they are the ones it started with."""
    text = json.dumps([splits.train, splits.val], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_architecture(base: Config, cfg: Config, base_dir: Path) -> None:
    """Refuse overrides that would change the base model's shape (its weights would not fit)."""
    for f in dataclasses.fields(base.model):
        if f.name not in CHANGEABLE_MODEL_KEYS and getattr(base.model, f.name) != getattr(cfg.model, f.name):
            raise PsyDuckError(
                f"finetune keeps {base_dir}'s architecture: model.{f.name} cannot change "
                f"(it is {getattr(base.model, f.name)!r}); only model.dropout may"
            )


def fresh_setup(base: Path, overrides: list[str] | dict[str, Any]) -> tuple[Config, Tokenizer, ChatTemplate]:
    """The new run's config, tokenizer (with the role markers) and template, from the base run."""
    base_cfg = read_run_config(base)
    tokenizer = load_tokenizer(base).with_special_tokens(ROLE_MARKERS)
    # conversations are drawn by ChatBatches, not as windows of token shards: the base's sampling does not apply
    defaults = {"train.max_iters": DEFAULT_ITERS, "train.sampling": "random"}
    cfg = apply_overrides(apply_overrides(base_cfg, defaults), overrides)
    _check_architecture(base_cfg, cfg, base)
    cfg.model.vocab_size = max(cfg.model.vocab_size, tokenizer.vocab_size)
    cfg.data.tokenizer = tokenizer.name  # what load_run checks tokenizer.json against
    return cfg, tokenizer, marker_template()


def resumed_setup(out: Path, overrides: list[str] | dict[str, Any]) -> tuple[Config, Tokenizer, ChatTemplate]:
    """The saved config (flags on top), tokenizer and template of a fine-tune being resumed."""
    saved = read_run_config(out)
    cfg = apply_overrides(saved, overrides)
    _check_architecture(saved, cfg, out)
    return cfg, load_tokenizer(out), load_template(out)


def check_same_data(out: Path, fingerprint: str) -> None:
    """Refuse to resume on other conversations than the run started with (the batches would differ)."""
    try:
        record = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    if record.get("data_fingerprint") not in (None, fingerprint):
        raise PsyDuckError(
            f"{out} was fine-tuned on other conversations ({record.get('chat')}); resume with the same --chat "
            "data, or fine-tune into a new --out"
        )


def sample_prompt(template: ChatTemplate, tokenizer: Tokenizer, splits: ChatSplits) -> tuple[str, list[int], tuple[str, ...]]:
    """The first held-out question, as the trainer's sample prompt (samples.txt shows the answers improve)."""
    conversation = splits.val[0]
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    messages = conversation[:last]
    shown = template.render(messages)[len(template.begin):]
    return shown, template.encode(tokenizer, messages), template.stop_strings


def finetune(
    base: str | Path,
    chat: str,
    out: str | Path,
    overrides: list[str] | dict[str, Any] = (),
    *,
    resume: bool = False,
    progress: bool = True,
    max_conversations: int | None = None,
) -> dict[str, Any]:
    """Fine-tune run `base` on the conversations `chat` names (a jsonl file or "wiki-vital-qa") into `out`.

    Returns the last evaluation's numbers, as `train` does; `resume=True` continues `out`.
    `max_conversations` trains on a fixed random subset of that many (quick trials).
    """
    base, out = Path(base), Path(out)
    if base.resolve() == out.resolve():
        raise PsyDuckError(f"--out {out} is the base run itself; fine-tune into a new folder")
    overrides = dict(overrides) if isinstance(overrides, dict) else list(overrides)
    resuming = resume and (out / "config.json").exists()
    cfg, tokenizer, template = resumed_setup(out, overrides) if resuming else fresh_setup(base, overrides)
    splits = load_chat_data(chat).limited(max_conversations)
    fingerprint = data_fingerprint(splits)
    if resuming:
        check_same_data(out, fingerprint)
    batches = ChatBatches(splits, tokenizer, template, cfg.model.block_size, seed=cfg.train.seed)

    def init_weights(model: GPT) -> None:
        base_model, base_tokenizer = load_run(base)
        load_grown(model, base_model, base_tokenizer.vocab_size)

    feed = Feed(
        batches=batches, tokenizer=tokenizer, init_weights=init_weights,
        sample_prompt=sample_prompt(template, tokenizer, splits),
        resume_command=f"psyduck finetune {base} --chat {chat} --out {out} --resume"
        + (f" --max-conversations {max_conversations}" if max_conversations else ""),
    )
    trainer = Trainer(cfg, out, resume=resume, progress=progress, feed=feed)
    try:
        if trainer.dist.main:
            trainer.log(f"chat data {chat}: {batches.describe()}")
            out.mkdir(parents=True, exist_ok=True)
            template.save(out)
            if not resuming or not (out / RECORD).exists():
                record = {"base": str(base), "chat": chat, "data_fingerprint": fingerprint, "added_tokens": tokenizer.added_tokens}
                write_json_atomic(out / RECORD, record)
        result = trainer.run()
        trainer.dist.barrier()  # as `train` does: leave together
        return result
    finally:
        trainer.dist.close()
