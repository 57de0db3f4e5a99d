"""Other ecosystems' formats: export a run to Hugging Face, GGUF or ollama, import a GPT-2, Llama or Arcee from Hugging Face.

    psyduck export runs/demo --format hf --out exports/demo-hf       # AutoModelForCausalLM.from_pretrained
    psyduck export runs/demo --format gguf --quant q8_0 --out exports/demo.gguf   # llama.cpp and its family
    psyduck export runs/demo --format ollama --out exports/demo-ollama            # GGUF + Modelfile
    psyduck export runs/demo --format hf --push-to-hub user/demo                  # with its model card
    psyduck import-hf path/to/gpt2-folder --out runs/imported

    loading.py       what every export does first: load (refusing NaN weights), claim the output path
    gpt2_names.py    the one GPT-2 name table, read both ways (export and import)
    llama_names.py   the one Llama / Arcee name table, read both ways
    layout.py        the exporters' common layout: weights under llama.cpp's names, float32
    hf_tokenizer.py  a run's tokenizer as a Hugging Face tokenizer.json (cl100k_base converted)
    hf_export.py     the transformers folder (GPT-2, Llama or Arcee classes, else PsyDuck's own code)
    hf_remote.py     that own code's config and weights; the code itself is remote/*.py
    model_card.py    the folder's README.md, from the run's figures
    hub.py           --push-to-hub
    gguf_export.py   the GGUF file (gpt2, llama or arcee architectures)
    gguf_quant.py    GGUF tensor types (f32, f16, q8_0) and their measured next-token agreement
    ollama.py        the GGUF file and a Modelfile
    llamacpp.py      the proof: a GGUF file in llama.cpp against PsyDuck (scripts/check_llamacpp.sh)
    hf_import.py     a GPT-2, Llama or Arcee transformers folder -> a run (which records where it came from)
    hf_import_llama.py  Llama's and Arcee's config and weights as PsyDuck's (for hf_import)

`transformers` and `gguf` are only imported where needed: the Hugging Face folder is written
without `transformers`, and only the GGUF writer needs the `gguf` package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from psyduck.errors import PsyDuckError

FORMATS = ("hf", "gguf", "ollama")
QUANTS = ("f32", "f16", "q8_0")  # GGUF tensor types (gguf_quant.py)
DEFAULT_OUT = {"hf": "{}-hf", "gguf": "{}.gguf", "ollama": "{}-ollama"}


def export(
    run: str | Path, fmt: str, out: str | Path | None = None, checkpoint: str | None = None, *,
    quant: str | None = None, force: bool = False, push_to_hub: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Export a run in `fmt` (hf, gguf or ollama); `out` defaults to exports/<run>-hf, .gguf or -ollama.

    `quant` (GGUF, ollama): f32 (GGUF's default), f16 or q8_0 (ollama's default). `force` replaces
    an existing `out`. `push_to_hub` ("user/repo", hf only) uploads the folder. `log` receives the
    lines worth printing (sizes, agreement, where it went).
    """
    run = Path(run)
    if fmt not in FORMATS:
        raise PsyDuckError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if push_to_hub and fmt != "hf":
        raise PsyDuckError(f"--push-to-hub uploads a Hugging Face folder; use it with --format hf, not {fmt}")
    if quant is not None and fmt == "hf":
        raise PsyDuckError("--quant is for --format gguf or ollama; a Hugging Face export is float32")
    out = Path(out) if out is not None else Path("exports") / DEFAULT_OUT[fmt].format(run.name)
    if fmt == "gguf":
        from psyduck.interop.gguf_export import export_gguf

        return export_gguf(run, out, checkpoint, quant=quant or "f32", force=force, log=log)
    if fmt == "ollama":
        from psyduck.interop.ollama import export_ollama

        return export_ollama(run, out, checkpoint, quant=quant or "q8_0", force=force, log=log)
    from psyduck.interop.hf_export import export_hf
    from psyduck.interop.hub import hub_target, push

    target = hub_target(push_to_hub) if push_to_hub else None  # refuse before exporting, not after
    export_hf(run, out, checkpoint, force=force, repo=push_to_hub)
    if target is not None:
        url = push(out, target)
        if log is not None:
            log(f"pushed {out} -> {url}")
    return out


__all__ = ["FORMATS", "QUANTS", "export"]
