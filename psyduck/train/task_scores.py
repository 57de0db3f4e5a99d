"""Benchmark scores during training: the multiple-choice sets `eval.tasks` names.

A loss curve says the model predicts text better; a benchmark says it answers better. Every
`eval.task_every` steps (or at each evaluation) the trainer scores a fixed subset of each set with
`psyduck.tasks.score_multiple_choice` (each ending's log-likelihood after the context, `acc` and
`acc_norm` as lm-evaluation-harness defines them, no lm-eval import) and logs them in
metrics.jsonl as `task/<name>/acc` and `task/<name>/acc_norm`, drawn beside the loss curves.

Sets are read once, when training starts, so a missing file fails then and not an hour in:
- the path of a .jsonl file, one item a line: {"ctx", "endings", "label"},
  {"context", "choices", "label"}, or a raw HellaSwag row (activity_label, ctx_a, ctx_b, endings,
  label), posed as the harness's `hellaswag` task poses it; the set is named after the file's stem;
- `hellaswag`: HellaSwag's validation split from the Hugging Face datasets cache (it is never
  downloaded here: a cache without it is a one-line error naming the fix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from psyduck.config import EvalConfig
from psyduck.errors import PsyDuckError
from psyduck.tasks import MultipleChoiceItem, hellaswag_item, score_multiple_choice
from psyduck.tasks.scoring import TextTokenizer

HELLASWAG = "Rowan/hellaswag"  # the dataset the harness's hellaswag task reads


@dataclass(frozen=True)
class TaskSet:
    """One named multiple-choice set, already cut to the items scored at every evaluation."""

    name: str
    items: tuple[MultipleChoiceItem, ...]


def load_task_sets(cfg: EvalConfig) -> list[TaskSet]:
    """Every set `cfg.tasks` names, each cut to its first `cfg.task_limit` items."""
    sets = []
    for name in cfg.task_names():
        if name == "hellaswag":
            sets.append(TaskSet("hellaswag", tuple(hellaswag_items(cfg.task_limit))))
        elif name.endswith(".jsonl") or Path(name).is_file():
            sets.append(TaskSet(Path(name).stem, tuple(read_items_jsonl(Path(name), cfg.task_limit))))
        else:
            raise PsyDuckError(
                f"unknown task {name!r} in eval.tasks; use hellaswag or the path of a .jsonl file of "
                '{"ctx", "endings", "label"} items'
            )
    return sets


def score_task_sets(model: torch.nn.Module, tokenizer: TextTokenizer, sets: list[TaskSet]) -> dict[str, float]:
    """`task/<name>/acc` and `task/<name>/acc_norm` of each set, for a metrics row."""
    row: dict[str, float] = {}
    for task in sets:
        scores = score_multiple_choice(model, tokenizer, task.items)
        row[f"task/{task.name}/acc"] = scores["acc"]
        row[f"task/{task.name}/acc_norm"] = scores["acc_norm"]
    return row


def read_items_jsonl(path: Path, limit: int) -> list[MultipleChoiceItem]:
    """The first `limit` items of a .jsonl file (blank lines skipped)."""
    if not path.is_file():
        raise PsyDuckError(f"task file not found: {path}; give eval.tasks an existing .jsonl file")
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if len(items) >= limit:
                break
            if line.strip():
                items.append(_item(line, f"{path}:{number}"))
    if not items:
        raise PsyDuckError(f"task file {path} holds no items; write one JSON object a line")
    return items


def _item(line: str, where: str) -> MultipleChoiceItem:
    """One line of a task file as a question, whichever of the accepted shapes it has."""
    try:
        doc: dict[str, Any] = json.loads(line)
        if "ctx_a" in doc and "activity_label" in doc:
            return hellaswag_item(doc)
        context = doc["ctx"] if "ctx" in doc else doc["context"]
        choices = doc["endings"] if "endings" in doc else doc["choices"]
        return MultipleChoiceItem(str(context), tuple(str(c) for c in choices), int(doc["label"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise PsyDuckError(
            f"{where} is not a multiple-choice item; write {{\"ctx\": ..., \"endings\": [...], \"label\": N}} "
            '(or "context"/"choices")'
        ) from None


def hellaswag_items(limit: int) -> list[MultipleChoiceItem]:
    """HellaSwag's first `limit` validation items, from the Hugging Face datasets cache only."""
    fix = (
        f"run `python -c \"import datasets; datasets.load_dataset('{HELLASWAG}', split='validation')\"` once "
        "with network access, or give eval.tasks a local .jsonl file"
    )
    try:
        import datasets
    except ImportError:
        raise PsyDuckError(f"eval.tasks=hellaswag needs the datasets package; pip install 'psyduck[eval]', then {fix}") from None
    cache = Path(datasets.config.HF_DATASETS_CACHE) / HELLASWAG.replace("/", "___")
    if not cache.is_dir():  # looked up first: the Hub client retries for half a minute when offline
        raise PsyDuckError(f"eval.tasks=hellaswag: HellaSwag is not in the Hugging Face datasets cache ({cache}); {fix}")
    try:
        rows = datasets.load_dataset(HELLASWAG, split=f"validation[:{limit}]")
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "not usable here"
        raise PsyDuckError(f"eval.tasks=hellaswag: cannot read HellaSwag from the cache ({type(e).__name__}); {fix}") from None
    return [hellaswag_item(row) for row in rows]
