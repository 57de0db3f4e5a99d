"""Proof in a real runtime: llama.cpp (through llama-cpp-python) against PsyDuck, on one exported GGUF.

    python -m psyduck.interop.llamacpp runs/demo exports/demo.gguf    # or scripts/check_llamacpp.sh

Three comparisons, each printed: tokenization of a sample text (ids equal), the logits of every
position of that text (float32 file and float32 KV cache: within 1e-3), and 30 greedy tokens
after a prompt (equal). llama-cpp-python is optional and never built here: where it is not
importable the check says so in one line (and the test suite skips with that reason).

Two things llama.cpp's CPU code computes on purpose less exactly than PsyDuck, so they are not
held to the exact bounds: its GELU reads a float16 table (ggml's GGML_GELU_FP16: input and value
rounded to 11 bits, up to ~4e-3 of each activation), so GELU models (gpt2) get GELU_LOGIT_TOLERANCE;
and its q8_0 products round the activations to 8 bits as well as the weights, so in quantized files
the greedy text may part from float32's at a near-tie: reported, not failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from psyduck.errors import PsyDuckError
from psyduck.interop.gguf_quant import SAMPLE_TEXT

RUNTIME_MISSING = (
    "llama.cpp is not importable (pip install llama-cpp-python; its source build takes minutes, "
    "and the prebuilt llama-cpp-py-sync wheel needs glibc 2.38)"
)
GGML_TYPE_F32 = 0  # llama.cpp's KV-cache type for exact comparisons
LOGIT_TOLERANCE = 1e-3  # float32 file, float32 KV cache
GELU_LOGIT_TOLERANCE = 5e-3  # the same, through ggml's float16 GELU table (measured: 2.2e-3 on the tests' random gpt2)


def logit_tolerance(activation: str) -> float:
    """The bound on |logit difference| for a float32 file of a model with this FFN activation."""
    return GELU_LOGIT_TOLERANCE if activation == "gelu" else LOGIT_TOLERANCE


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
    tolerance: float = LOGIT_TOLERANCE  # what max_logit_diff is held to in a float32 file

    @property
    def greedy_summary(self) -> str:
        """"27 greedy tokens equal", or where the two texts part."""
        if self.same_greedy:
            return f"{len(self.ours)} greedy tokens equal"
        pairs = zip(self.ours, self.theirs)
        first = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(self.ours), len(self.theirs)))
        return f"greedy tokens DIFFERENT from token {first + 1} of {len(self.ours)}"


class LlamaCpp:
    """One GGUF file in llama.cpp, through llama-cpp-python's bindings of llama.h (its C API).

    Not its `Llama` class: that one cannot turn off llama.cpp's extra weight buffers, and on CPUs
    with AMX their q8_0 matrix product crashes (ggml-org/llama.cpp#20824, seen on this project's
    CI-class Xeon), so the weights stay in plain CPU buffers here (`use_extra_bufts = False`): the
    same arithmetic, one kernel fewer. One thread, a float32 KV cache and plain attention (as the
    `Llama` class's defaults), for an exact comparison.
    """

    def __init__(self, path: Path, n_ctx: int) -> None:
        import llama_cpp as lc

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its loader's chatter
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.use_extra_bufts = False
        self.lc = lc
        self.model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise PsyDuckError(f"llama.cpp cannot load {path} (its error is printed above); compare a file "
                               "written by `psyduck export --format gguf`")
        cp = lc.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_threads = cp.n_threads_batch = 1
        cp.type_k = cp.type_v = GGML_TYPE_F32
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED  # its CPU kernel rounds q to float16
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise PsyDuckError(f"llama.cpp cannot make a context of {n_ctx} tokens for {path} (its error is printed above)")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization of `text` (no BOS added, special tokens read as text)."""
        raw = text.encode("utf-8")
        buf = (self.lc.llama_token * (len(raw) + 8))()
        n = self.lc.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, False)
        return list(buf[:n])

    def logits(self, ids: list[int], start: int = 0) -> np.ndarray:
        """(len(ids), n_vocab) logits of `ids` placed at positions start.. (start 0 empties the cache)."""
        lc = self.lc
        if start == 0:
            lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        batch = lc.llama_batch_init(len(ids), 0, 1)
        try:
            batch.n_tokens = len(ids)
            for i, t in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, start + i, 1, True
                batch.seq_id[i][0] = 0
            if lc.llama_decode(self.ctx, batch) != 0:
                raise PsyDuckError(f"llama.cpp failed to evaluate {len(ids)} tokens; the GGUF file does not fit its runtime")
            out = lc.llama_get_logits(self.ctx)
            return np.ctypeslib.as_array(out, shape=(len(ids) * self.n_vocab,)).reshape(len(ids), self.n_vocab).copy()
        finally:
            lc.llama_batch_free(batch)

    def greedy(self, prompt: list[int], n: int, eot: int) -> list[int]:
        """n argmax tokens after `prompt`, straight from llama.cpp's logits (no sampler in between)."""
        out: list[int] = []
        last = self.logits(prompt)[-1]
        for i in range(n):
            out.append(int(np.argmax(last)))
            if out[-1] == eot or i == n - 1:
                break
            last = self.logits(out[-1:], start=len(prompt) + i)[-1]  # the KV cache holds the rest
        return out

    def close(self) -> None:
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


def compare(run: Path, gguf_path: Path, n_tokens: int = 30, prompt: str = "The history of") -> Comparison:
    """Load `gguf_path` in llama.cpp and run `run` in PsyDuck on the same text; see the module docstring."""
    from psyduck.generate import generate
    from psyduck.runs import load_run

    model, tok = load_run(run)
    T = model.config.block_size
    llm = LlamaCpp(gguf_path, T)
    try:
        ids = tok.encode(SAMPLE_TEXT)[:T]
        theirs_ids = llm.tokenize(tok.decode(ids))
        theirs_logits = llm.logits(ids)
        with torch.no_grad():
            ours_logits = model(torch.tensor([ids]))[0][0].numpy()
        diff = float(np.abs(ours_logits - theirs_logits[:, : ours_logits.shape[1]]).max())
        p = tok.encode(prompt)
        n = min(n_tokens, T - len(p))
        ours = generate(model, torch.tensor([p]), max_new_tokens=n, temperature=0, eot_id=tok.eot_id, exact=True)[0].tolist()[len(p):]
        theirs = llm.greedy(p, n, tok.eot_id)
    finally:
        llm.close()
    return Comparison(theirs_ids == ids, diff, ours == theirs, ours, theirs, logit_tolerance(model.config.activation))


def _is_float32(path: Path) -> bool:
    """Whether a GGUF file is all float32 (general.file_type 0), the one held to 1e-3 logits."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    return field is not None and int(field.contents()) == int(gguf.LlamaFileType.ALL_F32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="the run folder the GGUF was exported from")
    ap.add_argument("gguf", nargs="+", help="exported GGUF file(s)")
    ap.add_argument("--tokens", type=int, default=30, help="greedy tokens to compare (fewer where end-of-text comes first)")
    ap.add_argument("--prompt", default="The history of", help="the text the greedy tokens continue")
    args = ap.parse_args(argv)
    if not runtime_available():
        print(f"skipped: {RUNTIME_MISSING}")
        return 0
    ok = True
    for path in args.gguf:
        c = compare(Path(args.run), Path(path), args.tokens, args.prompt)
        exact = _is_float32(Path(path))  # quantized files are held to their tokenization only (module docstring)
        ok &= c.same_tokens and (not exact or (c.same_greedy and c.max_logit_diff <= c.tolerance))
        bound = f" (bound {c.tolerance:.0e})" if exact else " (quantized: reported)"
        print(f"{path}: tokenization {'equal' if c.same_tokens else 'DIFFERENT'}, max |logit diff| "
              f"{c.max_logit_diff:.2e}{bound}, {c.greedy_summary}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
