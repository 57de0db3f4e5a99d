"""Other ecosystems' formats: export a run to Hugging Face or GGUF, import a GPT-2 from Hugging Face.

    psyduck export runs/demo --format hf --out exports/demo-hf       # AutoModelForCausalLM.from_pretrained
    psyduck export runs/demo --format gguf --out exports/demo.gguf   # llama.cpp and its family
    psyduck import-hf path/to/gpt2-folder --out runs/imported

    gpt2_names.py    the one GPT-2 name table, read both ways (export and import)
    layout.py        the exporters' common layout: weights under llama.cpp's names, float32
    hf_tokenizer.py  a run's tokenizer as a Hugging Face tokenizer.json (cl100k_base converted)
    hf_export.py     the transformers folder (GPT-2, Llama or Arcee classes)
    gguf_export.py   the GGUF file (gpt2 or llama architectures)
    hf_import.py     a GPT-2 transformers folder -> a run (which records where it came from)

`transformers` and `gguf` are only imported where needed: the Hugging Face folder is written
without `transformers`, and only the GGUF writer needs the `gguf` package.
"""

from __future__ import annotations

from pathlib import Path

from psyduck.errors import PsyDuckError

FORMATS = ("hf", "gguf")


def export(run: str | Path, fmt: str, out: str | Path | None = None, checkpoint: str | None = None) -> Path:
    """Export a run in `fmt` ("hf" or "gguf"); `out` defaults to exports/<run>-hf or exports/<run>.gguf."""
    run = Path(run)
    if fmt not in FORMATS:
        raise PsyDuckError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if out is None:
        out = Path("exports") / (f"{run.name}-hf" if fmt == "hf" else f"{run.name}.gguf")
    if fmt == "hf":
        from psyduck.interop.hf_export import export_hf

        return export_hf(run, out, checkpoint)
    from psyduck.interop.gguf_export import export_gguf

    return export_gguf(run, out, checkpoint)


__all__ = ["FORMATS", "export"]
