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
  downloaded here: a cache without it is a one-line error naming the fix);
- `wiki-vital-mc`: built offline from the embedded corpus, "which description is this article's?"
  among four (`wiki_vital_mc_items`). A model trained on that corpus has read most of the articles,
  so it scores memory as much as language: a progress signal for a run, not a number to publish.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from psyduck.config import EvalConfig
from psyduck.errors import PsyDuckError
from psyduck.tasks import MultipleChoiceItem, encode_pair, hellaswag_item, score_multiple_choice
from psyduck.tasks.scoring import TextTokenizer

HELLASWAG = "Rowan/hellaswag"  # the dataset the harness's hellaswag task reads
BUILT_IN = ("hellaswag", "wiki-vital-mc")


@dataclass(frozen=True)
class TaskSet:
    """One named multiple-choice set, already cut to the items scored at every evaluation."""

    name: str
    items: tuple[MultipleChoiceItem, ...]


class TaskScorer:
    """The sets `eval.tasks` names, read once, and when the trainer scores them: every
    `eval.task_every` steps, or at each loss evaluation (0), and always at the last one."""

    def __init__(self, cfg: EvalConfig, tokenizer: TextTokenizer, block_size: int) -> None:
        self.sets = load_task_sets(cfg, fits_window(tokenizer, block_size))
        self.every = cfg.task_every

    def with_evaluation(self, step: int, final: bool = False) -> bool:
        """Whether the loss evaluation at `step` scores the tasks too."""
        return bool(self.sets) and (final or not self.every or step % self.every == 0)

    def alone(self, step: int) -> bool:
        """Whether `step`, which evaluates nothing else, scores the tasks in a row of their own."""
        return bool(self.sets) and self.every > 0 and step % self.every == 0

    def scores(self, model: torch.nn.Module, tokenizer: TextTokenizer) -> dict[str, float]:
        return score_task_sets(model, tokenizer, self.sets)


def fits_window(tokenizer: TextTokenizer, block_size: int) -> Callable[[MultipleChoiceItem], bool]:
    """Whether every ending of an item, as the scorer tokenizes it, fits the model's window."""

    def fits(item: MultipleChoiceItem) -> bool:
        return all(len(encode_pair(tokenizer, item.context, " " + c)[1]) <= block_size for c in item.choices)

    return fits


def load_task_sets(cfg: EvalConfig, fits: Callable[[MultipleChoiceItem], bool] = lambda item: True) -> list[TaskSet]:
    """Every set `cfg.tasks` names, each cut to its first `cfg.task_limit` items that `fits`
    (the built-in wiki-vital-mc skips the others; an item of another set that does not fit is an
    error now, not at the first evaluation)."""
    sets = []
    for name in cfg.task_names():
        if name == "wiki-vital-mc":
            sets.append(TaskSet(name, tuple(wiki_vital_mc_items(cfg.task_limit, fits=fits))))
            continue
        if name == "hellaswag":
            task = TaskSet(name, tuple(hellaswag_items(cfg.task_limit)))
        elif name.endswith(".jsonl") or Path(name).is_file():
            task = TaskSet(Path(name).stem, tuple(read_items_jsonl(Path(name), cfg.task_limit)))
        else:
            raise PsyDuckError(
                f"unknown task {name!r} in eval.tasks; use {' or '.join(BUILT_IN)} or the path of a .jsonl file of "
                '{"ctx", "endings", "label"} items'
            )
        too_long = next((k for k, item in enumerate(task.items, 1) if not fits(item)), None)
        if too_long is not None:
            raise PsyDuckError(
                f"task {name}: item {too_long} has an ending longer than the model's context window; "
                "shorten its endings or train with a larger model.block_size"
            )
        sets.append(task)
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


_DEFINITION = re.compile(r"^(.{3,60}?) (is|was|are|were) (.+)$")  # "Subject is a description..."


def wiki_vital_mc_items(
    limit: int, chars: int = 48, seed: int = 0, fits: Callable[[MultipleChoiceItem], bool] = lambda item: True
) -> list[MultipleChoiceItem]:
    """`limit` questions from the embedded corpus: "Subject is" and four endings, the start of this
    article's first sentence and of three other articles' (the same seed, the same questions), each
    cut at a word boundary within `chars` characters. Questions that do not `fit` are skipped."""
    from psyduck.data.sources import wiki_vital

    definitions = []
    for extract in wiki_vital():
        found = _DEFINITION.match(extract.split(". ", 1)[0].strip())
        if found and len(found.group(3).split()) >= 4:
            definitions.append((f"{found.group(1)} {found.group(2)}", _cut(found.group(3), chars)))
    rng = random.Random(seed)
    items: list[MultipleChoiceItem] = []
    for i in rng.sample(range(len(definitions)), len(definitions)):
        others = [definitions[j][1] for j in rng.sample(range(len(definitions)), 4) if j != i][:3]
        label = rng.randrange(4)
        item = MultipleChoiceItem(definitions[i][0], tuple(others[:label] + [definitions[i][1]] + others[label:]), label)
        if fits(item):
            items.append(item)
        if len(items) == limit:
            break
    return items


def _cut(text: str, chars: int) -> str:
    """The words of `text` that fit in `chars` characters (the first word at least), no trailing stop."""
    words = text.split()
    kept = [words[0]]
    for word in words[1:]:
        if len(" ".join(kept)) + 1 + len(word) > chars:
            break
        kept.append(word)
    return " ".join(kept).rstrip(".,;:")
