"""`psyduck eval RUN --tasks ...`: standard benchmarks through lm-evaluation-harness, in one call.

A thin wrapper over `lm_eval.simple_evaluate`: it checks the task names first (a typo is one line
with the closest names, not a traceback a minute later), runs the run as a `PsyDuckLM`, and keeps
each task's metrics and their standard errors in the run folder's tasks.json, next to the weights
they describe. Later evaluations of other tasks are merged into the same file.

Errors a user can fix come back as one-line `PsyDuckError`s: the [eval] extra not installed, an
unknown task, an --include-path that is not a folder, a task whose data is neither cached nor
reachable (offline), a local task whose data file is missing.
"""

from __future__ import annotations

import difflib
import json
import time
from pathlib import Path
from typing import Any

from psyduck.errors import PsyDuckError
from psyduck.io import write_json_atomic

RESULTS_FILE = "tasks.json"
INSTALL_HINT = "lm-evaluation-harness is not installed; pip install 'psyduck[eval]'"


def task_manager(include_path: str | Path | None = None, include_defaults: bool = True) -> Any:
    """The harness's task index: its own tasks (unless include_defaults=False) plus YAMLs under include_path."""
    try:
        from lm_eval.tasks import TaskManager
    except ModuleNotFoundError as e:
        raise PsyDuckError(INSTALL_HINT) from e
    if include_path is not None and not Path(include_path).is_dir():
        raise PsyDuckError(f"--include-path {include_path} is not a folder; point it at a folder of task YAML files")
    return TaskManager(include_path=None if include_path is None else str(include_path), include_defaults=include_defaults)


def check_task_names(names: list[str], manager: Any) -> None:
    """Refuse names the harness does not know, suggesting the closest ones it does."""
    if not names:
        raise PsyDuckError("--tasks is empty; name one or more tasks, e.g. --tasks hellaswag,arc_easy")
    for name in names:
        if manager.match_tasks([name]):
            continue
        close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise PsyDuckError(
            f"unknown task {name!r}{hint}; `lm-eval ls tasks` lists the harness's tasks, "
            "--include-path DIR adds your own task YAMLs"
        )


def evaluate_tasks(
    run: str | Path,
    tasks: list[str],
    include_path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
    checkpoint: str | None = None,
    include_defaults: bool = True,
    save: bool = True,
) -> dict[str, dict[str, Any]]:
    """Score run `run` on `tasks`: {task: {metric: value, metric_stderr: value, "samples": n}}.

    `limit` scores only each task's first N documents (a quick look; the standard errors say how
    rough). With `save`, the scores are merged into RUN/tasks.json.
    """
    if limit is not None and limit < 1:
        raise PsyDuckError(f"--limit must be at least 1 document per task, got {limit}")
    manager = task_manager(include_path, include_defaults)
    check_task_names(tasks, manager)
    import lm_eval

    from psyduck.hardware import pick_device
    from psyduck.tasks.harness import PsyDuckLM

    device = str(pick_device(device))  # refuse a device that is not here, as every psyduck command does
    lm = PsyDuckLM(run=str(run), checkpoint=checkpoint, batch_size=batch_size, device=device)
    try:
        output = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False, verbosity="WARNING"
        )
    except (ConnectionError, FileNotFoundError) as e:
        raise _data_error(tasks, manager, e) from e
    scores = task_scores(output)
    if save:
        save_scores(run, scores, {"limit": limit, "checkpoint": checkpoint, "lm_eval": lm_eval.__version__})
    return scores


def _data_error(tasks: list[str], manager: Any, error: Exception) -> PsyDuckError:
    """Which task's data could not be loaded, and what to do about it (one line)."""
    culprit = tasks[0]
    for name in tasks:
        try:
            manager.load([name])
        except (ConnectionError, FileNotFoundError):
            culprit = name
            break
    reason = " ".join(str(error).split())[:200]
    if isinstance(error, ConnectionError):
        return PsyDuckError(
            f"task {culprit!r}: its data is not in the Hugging Face cache and the Hub cannot be reached ({reason}); "
            "run it once online to cache the data (or unset HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)"
        )
    return PsyDuckError(f"task {culprit!r}: its data file is missing ({reason}); fix dataset_kwargs/data_files in its YAML")


def task_scores(output: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """simple_evaluate's results as {task: {metric: value, metric_stderr: value, "samples": n}}.

    The harness keys metrics as "metric,filter"; the filter is dropped where it is "none" (every
    log-likelihood task). Standard errors the harness could not compute ("N/A") become None.
    """
    scores: dict[str, dict[str, Any]] = {}
    samples = output.get("n-samples", {})
    for task, metrics in output["results"].items():
        entry: dict[str, Any] = {}
        for key, value in metrics.items():
            if key == "alias" or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            name = metric if filt == "none" else f"{metric},{filt}"
            entry[name] = None if value == "N/A" else value
        if task in samples:
            entry["samples"] = samples[task].get("effective")
        scores[task] = entry
    return scores


def save_scores(run: str | Path, scores: dict[str, dict[str, Any]], settings: dict[str, Any]) -> Path:
    """Merge `scores` (each with the settings that produced it) into RUN/tasks.json, atomically."""
    path = Path(run) / RESULTS_FILE
    saved: dict[str, Any] = {"tasks": {}}
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            saved = {"tasks": {}}  # unreadable: start over rather than refuse to save new scores
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for task, entry in scores.items():
        saved.setdefault("tasks", {})[task] = {**entry, **settings, "evaluated_at": stamp}
    write_json_atomic(path, saved)
    return path


def format_table(scores: dict[str, dict[str, Any]]) -> str:
    """One line per task and metric: value ± standard error, and the number of documents scored."""
    rows = [("task", "metric", "value", "stderr", "n")]
    for task, entry in scores.items():
        for metric, value in entry.items():
            if metric == "samples" or "_stderr" in metric or not isinstance(value, (int, float)):
                continue
            base, _, filt = metric.partition(",")
            err = entry.get(f"{base}_stderr" + (f",{filt}" if filt else ""))
            rows.append((task, metric, f"{value:.4f}", "" if err is None else f"± {err:.4f}", str(entry.get("samples", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
