"""Know how good a model is on the field's standard tasks (HellaSwag, ARC, PIQA, LAMBADA...).

- `scoring`: the built-in multiple-choice scorer, `score_multiple_choice(model, tokenizer, items)`,
  acc and acc_norm exactly as lm-evaluation-harness defines them; fast and dependency-free, for
  evaluation during training.
- `harness`: a run as an lm-evaluation-harness model, registered as `psyduck` (needs the [eval] extra).
- `run`: `psyduck eval RUN --tasks ...`, a thin wrapper over `lm_eval.simple_evaluate` that saves
  scores in RUN/tasks.json.
- `python -m psyduck.tasks ARGS`: the harness's own command line (`lm_eval ARGS`) with `--model
  psyduck` available. lm-eval 0.4.13 has no plugin discovery (its model registry is the fixed table
  in lm_eval/models/__init__.py, no entry points), so plain `lm_eval --model psyduck` cannot find
  the model: this one-line launcher registers it, then hands over to the harness.

Only `scoring` is imported here, so `from psyduck.tasks import score_multiple_choice` works without lm-eval.
"""

from psyduck.tasks.scoring import (
    MultipleChoiceItem,
    encode_pair,
    hellaswag_item,
    score_continuations,
    score_multiple_choice,
)

__all__ = ["MultipleChoiceItem", "encode_pair", "hellaswag_item", "score_continuations", "score_multiple_choice"]
