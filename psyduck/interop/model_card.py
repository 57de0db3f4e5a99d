"""The model card: the README.md a Hugging Face folder (and the Hub page) shows first.

Everything in it is read from the run folder, nothing is typed in: the architecture and size
(config.json), the data and tokenizer, the training recipe and how long it ran (the last row of
metrics.jsonl), the final validation loss and bits per byte, the task scores of `psyduck tasks`
(tasks.json) when there are any, the loss curve (loss_curve.png, copied beside the card), and the
lines that load the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psyduck.config import Config
from psyduck.io import read_jsonl
from psyduck.model import GPT
from psyduck.tokenizer import Tokenizer

LOSS_CURVE = "loss_curve.png"
TASKS_FILE = "tasks.json"
# what tasks.json keeps beside the metrics: how they were produced (psyduck/tasks/run.py, save_scores)
TASK_SETTINGS = ("samples", "limit", "checkpoint", "lm_eval", "evaluated_at")


@dataclass
class ModelCard:
    """The card's markdown, and the files it shows that must sit beside it (name -> source path)."""

    text: str
    files: dict[str, Path] = field(default_factory=dict)


def model_card(run: Path, model: GPT, tok: Tokenizer, architecture: str, remote_code: bool, repo: str) -> ModelCard:
    """The card for `model` from run folder `run`, exported as `architecture` (a transformers class)."""
    from psyduck.runs import read_run_config

    cfg = read_run_config(run)
    rows = [r for r in _metrics(run) if r.get("val_loss") is not None]
    last = rows[-1] if rows else None
    files = {LOSS_CURVE: run / LOSS_CURVE} if (run / LOSS_CURVE).is_file() else {}
    parts = [
        f"---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [psyduck]\n---\n\n# {repo}\n",
        "A small GPT trained from scratch with PsyDuck (`psyduck train`), exported with `psyduck export`.\n",
        _architecture(cfg, model, architecture),
        _data(cfg, tok),
        _training(cfg, last),
        _results(last, _tasks(run)),
        f"![loss curve]({LOSS_CURVE})\n" if files else "",
        _usage(repo, remote_code),
    ]
    return ModelCard("\n".join(p for p in parts if p), files)


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    return read_jsonl(path) if path.is_file() else []


def _tasks(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / TASKS_FILE).read_text(encoding="utf-8")).get("tasks", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _architecture(cfg: Config, model: GPT, architecture: str) -> str:
    m = cfg.model
    return (
        "## Architecture\n\n"
        f"- {model.num_params() / 1e6:.2f}M parameters ({model.num_params(non_embedding=True) / 1e6:.2f}M without embeddings), "
        f"`transformers` class `{architecture}`\n"
        f"- {m.n_layer} blocks, width {m.d_model}, {m.n_head} heads ({m.kv_heads} key/value), FFN {m.ffn_hidden}, "
        f"context {m.block_size} tokens\n"
        f"- positions {m.pos}, norm {m.norm} (pre-norm), activation {m.activation}, "
        f"{'tied' if m.tie_embeddings else 'untied'} embeddings, biases {'on' if m.bias else 'off'}"
        f"{', output-layer bias' if m.head_bias else ''}\n"
    )


def _data(cfg: Config, tok: Tokenizer) -> str:
    d = cfg.data
    return f"## Data and tokenizer\n\n- data: {d.source} (`{d.path}`)\n- tokenizer: {tok.name}, {tok.vocab_size} tokens\n"


def _training(cfg: Config, last: dict[str, Any] | None) -> str:
    t = cfg.train
    lines = [
        "## Training\n",
        (f"- AdamW, lr {t.lr:g} ({t.schedule}), weight decay {t.weight_decay:g}, betas ({t.beta1:g}, {t.beta2:g}), "
         f"batch {t.batch_size} x {t.grad_accum} accumulation, {t.max_iters} steps planned"),
    ]
    if last is not None:
        lines.append(f"- trained {last['step']} steps, {last.get('tokens', 0):,} tokens, in {_duration(last.get('elapsed_s'))}")
    return "\n".join(lines) + "\n"


def _results(last: dict[str, Any] | None, tasks: dict[str, Any]) -> str:
    if last is None and not tasks:
        return ""
    lines = ["## Results\n"]
    if last is not None:
        lines.append(f"- final validation loss {last['val_loss']:.4f} (step {last['step']})")
        if last.get("val_bpb") is not None:
            lines.append(f"- bits per byte {last['val_bpb']:.4f}")
    if tasks:
        lines += ["", "| task | metric | value | stderr | documents |", "|---|---|---|---|---|"]
        for task, entry in tasks.items():
            for metric, value in entry.items():
                if "_stderr" in metric or metric in TASK_SETTINGS or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                base, _, filt = metric.partition(",")
                err = entry.get(f"{base}_stderr" + (f",{filt}" if filt else ""))
                lines.append(f"| {task} | {metric} | {value:.4f} | {'' if err is None else f'{err:.4f}'} | "
                             f"{entry.get('samples', '')} |")
    return "\n".join(lines) + "\n"


def _usage(repo: str, remote_code: bool) -> str:
    trust = ", trust_remote_code=True" if remote_code else ""
    note = (
        "\nThe model's code (`modeling_psyduck.py`) ships in this folder: `trust_remote_code=True` runs it "
        "(the tokenizer is a plain `PreTrainedTokenizerFast`, but `transformers` reads the model's config to find it).\n"
        if remote_code else ""
    )
    return (
        "## How to use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'tok = AutoTokenizer.from_pretrained("{repo}"{trust})\n'
        f'model = AutoModelForCausalLM.from_pretrained("{repo}"{trust})\n'
        'ids = tok("The history of", return_tensors="pt").input_ids\n'
        "print(tok.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))\n```\n" + note
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "an unrecorded time"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
