"""What every exporter does first: load the run's weights (refusing broken ones) and claim the output path.

Three refusals live here, once for every format: weights holding NaN or infinity (a diverged run
exports garbage that no runtime would flag), an output path that already exists (an export
never replaces a user's file or folder unless asked to, with `--force`), and one that cannot be
written (`writing`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


from psyduck.errors import PsyDuckError
from psyduck.model import GPT
from psyduck.tokenizer import Tokenizer


def load_for_export(run: Path, checkpoint: str | None) -> tuple[GPT, Tokenizer]:
    """The run's model (eval mode, CPU) and tokenizer; refused (by `load_run`) when any weight is NaN or
    infinite, and here when the model uses a recipe variant no exporter computes yet (`ModelConfig.nonstandard_features`:
    exporting it anyway would give a model that silently computes something else)."""
    from psyduck.runs import load_run

    model, tok = load_run(run, checkpoint=checkpoint)
    features = model.config.nonstandard_features()
    if features:
        raise PsyDuckError(
            f"cannot export {run}: it was trained with {', '.join(features)}, which no export format computes yet; "
            "export a run trained without them"
        )
    return model, tok


def claim_output(out: Path, force: bool, kind: str) -> None:
    """Refuse an existing `out` (an empty folder is fine) unless `force`; never a run folder.

    `kind` is "file" or "folder", the shape the export writes.
    """
    if kind == "file" and out.is_dir():
        raise PsyDuckError(f"--out {out} is a folder; give the file's name, e.g. {out / 'model.gguf'}")
    if kind == "folder" and out.exists() and not out.is_dir():
        raise PsyDuckError(f"--out {out} is a file; choose a folder name for this export")
    if (out / "checkpoints").is_dir():
        raise PsyDuckError(f"--out {out} holds a run; export to a folder of its own, e.g. exports/{out.name}-hf")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise PsyDuckError(f"--out {out} already exists; choose another name, or pass --force to replace it")


@contextmanager
def writing(out: Path) -> Iterator[None]:
    """Turn a failure to create or write `out` (no such folder, no permission, a full disk) into one line."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        yield
    except OSError as e:
        reason = e.strerror or type(e).__name__
        if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename:  # a file where a folder must be
            reason = f"{e.filename} is a file, not a folder"
        raise PsyDuckError(f"cannot write --out {out}: {reason}; choose a writable place for the export") from None
