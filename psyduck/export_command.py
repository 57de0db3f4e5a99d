"""CLI wiring for `psyduck export` and `psyduck import-hf` (psyduck/cli.py calls `register`).

    psyduck export runs/demo --format hf --out exports/demo-hf
    psyduck export runs/demo --format gguf --quant q8_0 --out exports/demo.gguf
    psyduck export runs/demo --format ollama --out exports/demo-ollama
    psyduck export runs/demo --format hf --push-to-hub user/demo
    psyduck import-hf path/to/gpt2-folder --out runs/imported

The work lives in psyduck/interop/, imported only when a command runs.
"""

from __future__ import annotations

import argparse

from psyduck.interop import FORMATS, QUANTS


def cmd_export(args: argparse.Namespace) -> None:
    from psyduck.interop import export

    out = export(
        args.run, args.format, args.out, checkpoint=args.checkpoint, quant=args.quant, force=args.force,
        push_to_hub=args.push_to_hub, log=lambda line: print(line, flush=True),
    )
    print(f"exported {args.run} ({args.format}) -> {out}")


def cmd_import_hf(args: argparse.Namespace) -> None:
    from pathlib import Path

    from psyduck.interop.hf_import import import_hf

    out = args.out or f"runs/{Path(args.folder).resolve().name}"
    run = import_hf(args.folder, out)
    print(f"imported {args.folder} -> {run}")
    print(f"generate: psyduck generate {run} --prompt 'Hello'")
    print(
        f"continue training: prepare data with the run's tokenizer ({run}/tokenizer.json) into a folder, then "
        f"psyduck train --resume --out {run} --data FOLDER"
    )


def register(subparsers) -> None:
    s = subparsers.add_parser("export", help="write a run as a Hugging Face folder, a GGUF file or an ollama folder")
    s.add_argument("run", help="a run folder written by `psyduck train`")
    s.add_argument("--format", choices=FORMATS, default="hf",
                   help="hf (transformers folder with a model card, default), gguf (llama.cpp) or ollama (GGUF + Modelfile)")
    s.add_argument("--out", help="output folder (hf, ollama) or .gguf file (default exports/<run>-hf, .gguf, -ollama)")
    s.add_argument("--quant", choices=QUANTS, default=None,
                   help="GGUF tensor type: f32 (gguf default), f16 or q8_0 (ollama default)")
    s.add_argument("--force", action="store_true", help="replace an existing --out")
    s.add_argument("--push-to-hub", metavar="USER/REPO", help="upload the hf folder to the Hugging Face Hub")
    s.add_argument("--checkpoint", help="a checkpoint folder, or 'best' (default: the newest loadable)")
    s.set_defaults(func=cmd_export)

    s = subparsers.add_parser("import-hf", help="turn a GPT-2, Llama or Arcee transformers folder into a run")
    s.add_argument("folder", help="a folder with config.json (model_type gpt2), weights and tokenizer.json")
    s.add_argument("--out", help="run folder to create (default runs/<folder name>)")
    s.set_defaults(func=cmd_import_hf)
