"""What trained runs score through lm-evaluation-harness, offline: local tasks made from held-out text.

    python benchmarks/preset_tasks.py runs/demo                    # the README demo's run
    python benchmarks/preset_tasks.py runs/demo runs/tiny --docs 300
    python benchmarks/preset_tasks.py runs/demo --standard          # also try hellaswag, lambada_openai, arc_easy, piqa

The standard tasks need their data in the Hugging Face cache (a network download the first time);
on a machine without one they are reported as the one-line error `psyduck eval` gives. So that a
CPU preset has real numbers anyway, this writes three local tasks (YAML + jsonl, `dataset_path:
json`), run through the harness exactly as `psyduck eval RUN --tasks NAME --include-path DIR` runs
them:

- `wiki_vital_val`: the run's own validation documents (never trained on), `loglikelihood_rolling`:
  word perplexity and bits per byte as the harness computes them (compare `psyduck eval RUN`);
- `wiki_vital_lastword`: LAMBADA's protocol on those documents: each document's last word given
  the rest (left-truncated to the window), `acc` = the greedy continuation is exactly that word;
- `wiki_vital_mc`: the built-in multiple-choice set (psyduck/train/task_scores.py; "Subject is"
  and four endings). Its articles are mostly in the training split, so it measures memory as much
  as language.

Prints one JSON object: per run, each task's metrics with standard errors (also merged into
RUN/tasks.json, as `psyduck eval --tasks` does), and the standard tasks' scores or errors.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import emit, machine, rounded  # noqa: E402

from psyduck.errors import PsyDuckError  # noqa: E402

STANDARD = ["hellaswag", "lambada_openai", "arc_easy", "piqa"]
LOCAL = ["wiki_vital_val", "wiki_vital_lastword", "wiki_vital_mc"]
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]+)\W*$", re.S)


def val_documents(run: Path, n: int) -> list[str]:
    """The first `n` validation documents of the data the run was trained on, as text."""
    import numpy as np

    from psyduck.config import load_config_json
    from psyduck.data.loader import TokenData

    data = TokenData(load_config_json(run / "config.json").data.path)
    tok, ids = data.tokenizer(), np.asarray(data.tokens("val"))
    ends = np.flatnonzero(ids == data.eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    docs = [tok.decode(ids[s:e].tolist()).strip() for s, e in zip(starts, ends)]
    return [d for d in docs if d][:n]


def write_local_tasks(folder: Path, docs: list[str], mc_items: int) -> None:
    """The three local tasks' YAMLs and jsonl files under `folder`."""
    from psyduck.train.task_scores import wiki_vital_mc_items

    def jsonl(name: str, rows: list[dict]) -> Path:
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    def yaml(task: str, data: Path, body: str) -> None:
        head = f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        (folder / f"{task}.yaml").write_text(head + body, encoding="utf-8")

    yaml("wiki_vital_val", jsonl("val", [{"text": d} for d in docs]),
         "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
         "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    pairs = [m.groups() for m in map(_LAST_WORD.match, docs) if m]
    yaml("wiki_vital_lastword", jsonl("lastword", [{"context": c, "word": " " + w} for c, w in pairs]),
         "output_type: loglikelihood\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{word}}'\n"
         "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
         "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    items = wiki_vital_mc_items(mc_items)
    yaml("wiki_vital_mc", jsonl("mc", [{"context": i.context, "choices": list(i.choices), "label": i.label} for i in items]),
         "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{label}}'\n"
         "doc_to_choice: choices\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders to score")
    p.add_argument("--docs", type=int, default=500, help="validation documents for the two text tasks (default 500)")
    p.add_argument("--mc-items", type=int, default=500, help="wiki_vital_mc questions (default 500)")
    p.add_argument("--standard", action="store_true", help=f"also try {', '.join(STANDARD)} (needs their data cached)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    from psyduck.tasks.run import evaluate_tasks

    out: dict = {"benchmark": "preset_tasks", "machine": machine(torch.device(args.device)), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="psyduck-tasks-") as tmp:
        for run in map(Path, args.runs):
            folder = Path(tmp) / run.name
            folder.mkdir()
            write_local_tasks(folder, val_documents(run, args.docs), args.mc_items)
            scores = evaluate_tasks(run, LOCAL, include_path=folder, batch_size=args.batch_size, device=args.device)
            row: dict = {"local": scores}
            if args.standard:
                row["standard"] = {}
                for task in STANDARD:
                    try:
                        row["standard"][task] = evaluate_tasks(run, [task], batch_size=args.batch_size, device=args.device)[task]
                    except PsyDuckError as e:
                        row["standard"][task] = {"error": str(e)}
            out["runs"][str(run)] = row
            print(f"[preset_tasks] {run}: " + ", ".join(
                f"{t} " + " ".join(f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, float) and not k.endswith("stderr"))
                for t, m in scores.items()), file=sys.stderr, flush=True)
    emit(rounded(out))


if __name__ == "__main__":
    main()
