"""Proof in a real runtime: llama.cpp (through llama-cpp-python) against PsyDuck, on one exported GGUF.

    python -m psyduck.interop.llamacpp runs/demo exports/demo.gguf    # or scripts/check_llamacpp.sh

Three comparisons, each printed: tokenization of a sample text (ids equal), the logits of every
position of that text (float32 file and float32 KV cache: within 1e-3), and 30 greedy tokens
after a prompt (equal). llama-cpp-python is optional and never built here: where it is not
importable the check says so in one line (and the test suite skips with that reason).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from psyduck.interop.gguf_quant import SAMPLE_TEXT

RUNTIME_MISSING = (
    "llama.cpp is not importable (pip install llama-cpp-python; its source build takes minutes, "
    "and the prebuilt llama-cpp-py-sync wheel needs glibc 2.38)"
)
GGML_TYPE_F32 = 0  # llama.cpp's KV-cache type for exact comparisons


def runtime_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Comparison:
    """What llama.cpp and PsyDuck agree on for one file."""

    same_tokens: bool
    max_logit_diff: float
    same_greedy: bool
    ours: list[int]
    theirs: list[int]


def _llama_greedy(llm: object, prompt: list[int], n: int, eot: int) -> list[int]:
    """n argmax tokens after `prompt`, straight from llama.cpp's logits (no sampler in between)."""
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        if nxt == eot:
            break
        llm.eval([nxt])
    return out


def compare(run: Path, gguf_path: Path, n_tokens: int = 30, prompt: str = "The history of") -> Comparison:
    """Load `gguf_path` in llama.cpp and run `run` in PsyDuck on the same text; see the module docstring."""
    from llama_cpp import Llama

    from psyduck.generate import generate
    from psyduck.runs import load_run

    model, tok = load_run(run)
    T = model.config.block_size
    llm = Llama(model_path=str(gguf_path), n_ctx=T, logits_all=True, verbose=False, type_k=GGML_TYPE_F32,
                type_v=GGML_TYPE_F32, n_threads=1)
    ids = tok.encode(SAMPLE_TEXT)[:T]
    theirs_ids = llm.tokenize(tok.decode(ids).encode("utf-8"), add_bos=False, special=False)
    llm.reset()
    llm.eval(ids)
    theirs_logits = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    with torch.no_grad():
        ours_logits = model(torch.tensor([ids]))[0][0].numpy()
    diff = float(np.abs(ours_logits - theirs_logits[:, : ours_logits.shape[1]]).max())
    p = tok.encode(prompt)
    n = min(n_tokens, T - len(p))
    ours = generate(model, torch.tensor([p]), max_new_tokens=n, temperature=0, eot_id=tok.eot_id, exact=True)[0].tolist()[len(p):]
    theirs = _llama_greedy(llm, p, n, tok.eot_id)
    return Comparison(theirs_ids == ids, diff, ours == theirs, ours, theirs)


def _is_float32(path: Path) -> bool:
    """Whether a GGUF file is all float32 (general.file_type 0), the one held to 1e-3 logits."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    return field is not None and int(field.contents()) == int(gguf.LlamaFileType.ALL_F32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="the run folder the GGUF was exported from")
    ap.add_argument("gguf", nargs="+", help="exported GGUF file(s)")
    ap.add_argument("--tokens", type=int, default=30, help="greedy tokens to compare")
    args = ap.parse_args(argv)
    if not runtime_available():
        print(f"skipped: {RUNTIME_MISSING}")
        return 0
    ok = True
    for path in args.gguf:
        c = compare(Path(args.run), Path(path), args.tokens)
        exact = _is_float32(Path(path))  # quantized files are held to tokens and greedy text only
        good = c.same_tokens and c.same_greedy and (c.max_logit_diff <= 1e-3 or not exact)
        ok &= good
        print(f"{path}: tokenization {'equal' if c.same_tokens else 'DIFFERENT'}, max |logit diff| "
              f"{c.max_logit_diff:.2e}, {len(c.ours)} greedy tokens {'equal' if c.same_greedy else 'DIFFERENT'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
