"""A run for ollama: a folder holding the GGUF file and a Modelfile that tells ollama how to run it.

    psyduck export runs/demo --format ollama --out exports/demo-ollama
    ollama create demo -f exports/demo-ollama/Modelfile && ollama run demo "The history of"

A PsyDuck model is a plain language model (no chat turns), so the template passes the prompt as
it is; the end-of-text token stops it; the sampling parameters are `psyduck generate`'s defaults
(temperature 0.7, top-k 50, no top-p, 100 new tokens, no repetition penalty, which ollama would
otherwise add), and the context is the model's own block size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from psyduck.interop.gguf_export import export_gguf
from psyduck.interop.loading import claim_output, writing
from psyduck.io import atomic_folder, write_text_atomic
from psyduck.runs import read_run_config
from psyduck.tokenizer import EOT

GGUF_NAME = "model.gguf"
# `psyduck generate`'s defaults (psyduck/cli.py), in ollama's names
SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 1.0, "repeat_penalty": 1.0, "num_predict": 100}


def modelfile(block_size: int) -> str:
    """The Modelfile text: FROM the GGUF beside it, the template, stop tokens, sampling defaults."""
    params = {**SAMPLING, "num_ctx": block_size}
    lines = [f"FROM ./{GGUF_NAME}", 'TEMPLATE """{{ .Prompt }}"""', f'PARAMETER stop "{EOT}"']
    lines += [f"PARAMETER {k} {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def export_ollama(
    run: str | Path, out: str | Path, checkpoint: str | None = None, quant: str = "q8_0", force: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write folder `out`: model.gguf (as `quant`) and its Modelfile; `log` gets the GGUF's report line."""
    run, out = Path(run), Path(out)
    claim_output(out, force, "folder")
    block_size = read_run_config(run).model.block_size
    with writing(out), atomic_folder(out) as tmp:
        export_gguf(run, tmp / GGUF_NAME, checkpoint, quant=quant, log=log, shown_as=out / GGUF_NAME)
        write_text_atomic(tmp / "Modelfile", modelfile(block_size))
    if log is not None:
        log(f"run it: ollama create {run.name} -f {out / 'Modelfile'}")
    return out
