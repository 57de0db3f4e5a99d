"""A PsyDuck run as a model for lm-evaluation-harness (`lm-eval` on PyPI), registered as `psyduck`.

    lm_eval.simple_evaluate(model="psyduck", model_args="run=runs/demo,batch_size=16", tasks=[...])
    python -m psyduck.tasks --model psyduck --model_args run=runs/demo --tasks hellaswag

The harness asks a model three kinds of question, and `PsyDuckLM` answers each the way the
harness's own Hugging Face model (`--model hf`, lm_eval/models/huggingface.py) does, so a run and
its `psyduck export --format hf` copy score alike:

- `loglikelihood(context, continuation)`: log P(continuation | context) and whether greedy decoding
  would produce it. Tokens as `TemplateLM` makes them (the base class is the harness's); a context
  + continuation longer than the window (block_size + 1 tokens) is **left-truncated**: the oldest
  context tokens are dropped, as HFLM does (`scoring.score_continuations`).
- `loglikelihood_rolling(text)`: the log-likelihood of a whole text, cut into windows by the
  harness's own `get_rolling_token_windows` (every token predicted once, the first from the
  end-of-text token), as HFLM does.
- `generate_until(context, {until, max_gen_toks})`: greedy decoding until a stop string or the
  end-of-text token. The context keeps its last block_size - max_gen_toks tokens (HFLM's
  left-truncation); where max_gen_toks does not fit in the window at all (HFLM refuses), the window
  slides instead: the context keeps its last block_size tokens and each new token sees the newest
  block_size. Sampling is not offered (`do_sample=true` is refused): benchmarks decode greedily.

All three are batched and run where the model is (`device=cpu|cuda|cuda:N|mps|auto`). Through the
harness's command line give the device and batch size as its own flags (`--device cpu --batch_size
16`, defaults cuda:0 and 1), not in --model_args: the harness passes both to every model itself.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from psyduck.errors import PsyDuckError
from psyduck.tasks.scoring import (
    TextTokenizer,
    forward_logits,
    right_pad,
    score_continuations,
)

log = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 16


def load_model(run: str, device: str | None, checkpoint: str | None) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer) of a run: the one place this package loads runs.

    Like the harness's HF model, a CUDA device on a machine without one means "the best there is":
    the harness's command line asks for cuda:0 whenever --device is not given.
    """
    from psyduck.hardware import pick_device
    from psyduck.runs import load_run

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        log.info("no CUDA GPU here for device %s; using the best device there is", device)
        device = None
    return load_run(run, device=pick_device(device or "auto"), checkpoint=checkpoint)


def parse_batch_size(value: int | str | None) -> int:
    """The harness passes batch sizes as text ("8", "auto", "auto:4"); "auto" means the default here."""
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except ValueError:
        raise PsyDuckError(f"batch_size must be a whole number, got {value!r}; e.g. batch_size=16") from None
    if size < 1:
        raise PsyDuckError(f"batch_size must be at least 1, got {size}")
    return size


@register_model("psyduck")
class PsyDuckLM(TemplateLM):
    """lm-evaluation-harness's view of a PsyDuck run: `model_args run=RUN[,checkpoint=..,batch_size=..,device=..]`.

    Or wrap a model already in memory: `PsyDuckLM(model=model, tokenizer=tokenizer)`. "auto" batch
    sizes mean the default, and `max_batch_size` (which the harness always passes) is ignored: there
    is no automatic batch sizing.
    """

    def __init__(
        self,
        run: str | None = None,
        checkpoint: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        device: str | None = None,
        max_batch_size: int | None = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: TextTokenizer | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            if run is None:
                raise PsyDuckError("the psyduck model needs a run folder: --model_args run=runs/NAME")
            model, tokenizer = load_model(str(run), device, checkpoint)
        assert tokenizer is not None, "give the tokenizer with the model"
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size = parse_batch_size(batch_size)
        self.block_size: int = model.config.block_size
        self._device = next(model.parameters()).device
        self.run = run

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self.block_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Ordinary text to ids; PsyDuck's tokenizer adds no special tokens, so the flag changes nothing."""
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int] | int, **kwargs: Any) -> str:
        return self.tokenizer.decode([tokens] if isinstance(tokens, int) else tokens)

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """The harness's tokenized requests ((strings), context ids, continuation ids) -> answers."""
        answers = score_continuations(self.model, [(ctx, cont) for _, ctx, cont in requests], self.batch_size)
        for (strings, _, _), answer in zip(requests, answers, strict=True):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, answer)
        return answers

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text, window by window (see the module docstring)."""
        windows: list[tuple[list[int], list[int]]] = []
        counts = []
        for (text,) in (r.args for r in requests):
            tokens = self.tok_encode(text)
            mine = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(tokens, self.eot_token_id, self.block_size, context_len=1)
            ]
            windows += mine
            counts.append(len(mine))
        scores = [ll for ll, _ in score_continuations(self.model, windows, self.batch_size)]
        totals, start = [], 0
        for request, n in zip(requests, counts, strict=True):
            totals.append(sum(scores[start : start + n]))
            start += n
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, totals[-1])
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first stop string (batched over requests with equal settings)."""
        eos = self.tok_decode(self.eot_token_id)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(repr(sorted(r.args[1].items())), []).append(i)
        out = [""] * len(requests)
        for indices in groups.values():
            kwargs = normalize_gen_kwargs(requests[indices[0]].args[1], 256)
            if kwargs.get("do_sample"):
                raise PsyDuckError("the psyduck harness model decodes greedily; set do_sample=false for this task")
            until = handle_stop_sequences(kwargs.get("until"), eos=eos)
            max_new = int(kwargs["max_gen_toks"])
            keep = self.block_size - max_new if max_new < self.block_size else self.block_size
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0])[-keep:] or [self.eot_token_id] for i in chunk]
                for i, ids in zip(chunk, greedy_until(self, prompts, max_new, until), strict=True):
                    out[i] = postprocess_generated_text(self.tok_decode(ids), stop=until, think_end_token=None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out


@torch.no_grad()
def greedy_until(lm: PsyDuckLM, prompts: list[list[int]], max_new: int, until: list[str]) -> list[list[int]]:
    """New ids after each prompt: the most probable token each step, until `until` text or end of text.

    Rows are right-padded into one batch (a causal model's logits at a row's last real position
    do not see the padding); finished rows leave the batch. Each row's input is its newest
    block_size tokens.
    """
    seqs = [list(p) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    for _ in range(max_new):
        if not active:
            break
        windows = [seqs[i][-lm.block_size :] for i in active]
        logits = forward_logits(lm.model, right_pad(windows).to(lm.device))  # (B, T, V)
        last = torch.tensor([len(w) - 1 for w in windows], device=logits.device)
        picks = logits[torch.arange(len(windows), device=logits.device), last].argmax(dim=-1).tolist()
        still = []
        for i, token in zip(active, picks, strict=True):
            if token == lm.eot_token_id:
                continue
            seqs[i].append(token)
            new[i].append(token)
            text = lm.tok_decode(new[i])
            if not any(stop and stop in text for stop in until):
                still.append(i)
        active = still
    return new
