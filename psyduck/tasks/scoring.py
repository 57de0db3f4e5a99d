"""Multiple choice by log-likelihood: the fast, built-in HellaSwag-style scorer.

How a base language model answers a multiple-choice question without being taught the format: for
each choice, ask "how probable is this ending after this context?" and pick the most probable one.
The probability of an ending is the product of its tokens' probabilities, so its log is a sum:

    log P(ending | context) = sum over the ending's tokens t of log p(t | everything before t)

- `acc`: the choice with the highest log-likelihood is right.
- `acc_norm`: the same after dividing each log-likelihood by the choice's length in *characters*
  (`len(choice)`, without the space put before it), so long endings are not punished merely for
  having more tokens to pay for. Both are exactly lm-evaluation-harness's definitions
  (`lm_eval/api/task.py`, `ConfigurableTask.process_results`, output type multiple_choice).

Design choices:
- Tokens as the harness makes them (`encode_pair`): trailing spaces of the context move to the
  continuation, the pair is encoded as one string and split at the context's token count, and an
  empty context becomes the end-of-text token. Equal tokens give equal scores, so this scorer and
  `--model psyduck` through the harness agree to the last bit, and the harness's `--model hf` on an
  export agrees within float rounding (tests/test_tasks.py proves both).
- Windows as the harness's Hugging Face model cuts them: a context + continuation longer than the
  model's window (block_size + 1 tokens: the last one is only predicted) loses tokens on the *left*;
  the continuation itself must fit.
- Batched with right padding: a causal model's outputs at a position never depend on later
  positions, so padding on the right changes nothing we read. Longest first, like the harness.
- No `lm_eval` import here: the trainer can call `score_multiple_choice` without the [eval] extra.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from psyduck.errors import PsyDuckError


class TextTokenizer(Protocol):
    """What scoring needs of a tokenizer: ordinary text to ids, and the end-of-text id."""

    eot_id: int

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One question: a context, its candidate endings, and the index of the right one."""

    context: str
    choices: tuple[str, ...]
    label: int


def forward_logits(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """idx (B, T) -> logits (B, T, V): the one place this package calls the model."""
    logits, _ = model(idx)
    return logits


def right_pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Rows of ids as one (B, longest) batch, zeros after each row's end (read nothing there)."""
    idx = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.long)
    for r, row in enumerate(rows):
        idx[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return idx


def encode_pair(tokenizer: TextTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-evaluation-harness tokenizes a request.

    `TemplateLM.loglikelihood` + `_encode_pair` in lm_eval/api/model.py: encoding the whole string
    once keeps the tokens at the seam the ones the model saw in training (" world" is one token, not
    " " + "world").
    """
    if context == "":
        cont = tokenizer.encode(continuation)
        if cont and cont[0] == tokenizer.eot_id:
            return cont[:1], cont[1:]
        return [tokenizer.eot_id], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    return whole[:n_context], whole[n_context:]


@torch.no_grad()
def score_continuations(
    model: torch.nn.Module, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 16
) -> list[tuple[float, bool]]:
    """(log-likelihood, is greedy) of each (context ids, continuation ids) pair, in input order.

    "Is greedy": every continuation token is the model's top choice at its position (the harness's
    second answer). Contexts longer than the window are cut on the left (see the module docstring).
    """
    block = model.config.block_size
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows, conts = [], []
            for i in chunk:
                context, cont = list(pairs[i][0]), list(pairs[i][1])
                if not 0 < len(cont) <= block:
                    raise PsyDuckError(
                        f"a continuation of {len(cont)} tokens cannot be scored in a {block}-token window; "
                        "shorten the task's answers (or use a model with a longer context)"
                    )
                rows.append((context + cont)[-(block + 1) :][:-1])
                conts.append(cont)
            logits = forward_logits(model, right_pad(rows).to(device))  # (B, T, V)
            for r, (row, cont) in enumerate(zip(rows, conts, strict=True)):
                logprobs = F.log_softmax(logits[r, len(row) - len(cont) : len(row)].float(), dim=-1)  # (n, V)
                target = torch.tensor(cont, device=logprobs.device)
                picked = logprobs.gather(1, target[:, None]).squeeze(1)
                greedy = bool((logprobs.argmax(dim=-1) == target).all())
                results[chunk[r]] = (float(picked.sum()), greedy)
    finally:
        model.train(was_training)
    return results


def score_multiple_choice(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    items: Iterable[MultipleChoiceItem],
    batch_size: int = 16,
    target_delimiter: str = " ",
) -> dict[str, float]:
    """acc and acc_norm (with standard errors) of `model` on `items`, as lm-evaluation-harness scores them.

    Each choice is scored as the continuation `target_delimiter + choice` of the item's context
    (the harness's default delimiter is one space). Returns acc, acc_stderr, acc_norm,
    acc_norm_stderr and items; a standard error is the sample standard deviation over sqrt(n), as
    the harness reports it (NaN for fewer than two items).
    """
    items = list(items)
    pairs, spans = [], []
    for item in items:
        if not 0 <= item.label < len(item.choices):
            raise PsyDuckError(f"label {item.label} is not one of the {len(item.choices)} choices of {item.context[:40]!r}")
        spans.append((len(pairs), len(pairs) + len(item.choices)))
        pairs += [encode_pair(tokenizer, item.context, target_delimiter + c) for c in item.choices]
    scores = [ll for ll, _ in score_continuations(model, pairs, batch_size)]
    acc, acc_norm = [], []
    for item, (lo, hi) in zip(items, spans, strict=True):
        lls = scores[lo:hi]
        normed = [ll / len(c) if c else math.copysign(math.inf, ll) for ll, c in zip(lls, item.choices, strict=True)]
        acc.append(float(_argmax(lls) == item.label))
        acc_norm.append(float(_argmax(normed) == item.label))
    return {
        "acc": _mean(acc), "acc_stderr": _stderr(acc),
        "acc_norm": _mean(acc_norm), "acc_norm_stderr": _stderr(acc_norm),
        "items": len(items),
    }


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value, the first one on ties (numpy.argmax's rule, which the harness uses)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _stderr(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return math.nan
    mu = _mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))


def _hellaswag_clean(text: str) -> str:
    """The harness's HellaSwag `preprocess`: strip, WikiHow's "[title]" -> ". ", drop other [tags]."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(doc: Mapping[str, Any]) -> MultipleChoiceItem:
    """A row of the HellaSwag dataset (Rowan/hellaswag) as the harness's `hellaswag` task poses it.

    Context: "activity label: ctx_a Ctx_b" (ctx_b capitalized); the four endings cleaned the same
    way (lm_eval/tasks/hellaswag/utils.py).
    """
    context = _hellaswag_clean(f"{doc['activity_label']}: {doc['ctx_a']} {doc['ctx_b'].capitalize()}")
    return MultipleChoiceItem(context, tuple(_hellaswag_clean(e) for e in doc["endings"]), int(doc["label"]))
