"""GGUF tensor types: float32, float16 or q8_0, and what the choice costs in next-token agreement.

    psyduck export runs/demo --format gguf --quant q8_0

One rule, `tensor_type`, decides each tensor's type for the file *and* for the measurement, so
the agreement printed is the file's: 1-D tensors (norms, biases) and the position table stay
float32; matrices become float16, or q8_0 (llama.cpp's 8-bit blocks: 32 values share one float16
scale d = max|x| / 127, each stored as round(x / d)) when their rows split into whole blocks, else
float16. Every value of a q8_0 tensor is then within Q8_0_TOLERANCE x max|block| / 127 of the
original: half a step of rounding, plus the scale's own float16 rounding (127 x 2^-11 of a step).

The measurement (`next_token_agreement`) rounds PsyDuck's own weights the same way (q8_0 blocks run
along a matrix's rows, which the GGUF layout keeps, so the values are those in the file) and
counts the positions of a sample text where the rounded model's likeliest next token is float32's.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from psyduck.model import GPT
from psyduck.tokenizer import Tokenizer

Q8_BLOCK = 32
Q8_0_TOLERANCE = 0.5 + 127 * 2.0**-11  # in steps of max|block| / 127
KEEP_F32 = ("position_embd.weight", "pos_emb.weight")  # GGUF and PsyDuck names; small, and the sinusoidal table is exact only in float32
SAMPLE_TEXT = (
    "The history of the world is the memory of the past experience of Homo sapiens around the world, as "
    "that experience has been preserved, largely in written records. Ancient history began with the "
    "invention of writing in Mesopotamia and Egypt. The river valleys of the Tigris, the Euphrates and the "
    "Nile gave early farmers water and rich soil, and cities grew where the harvests fed more people than "
    "worked the fields. Trade carried grain, copper and ideas between them; kings wrote laws on stone, and "
    "priests kept calendars to know when the floods would come. In the centuries that followed, empires "
    "rose and fell in Persia, Greece, India and China. Philosophers asked what a good life is, mathematicians "
    "proved that the angles of a triangle add up to two right angles, and physicians wrote down which herbs "
    "eased a fever. The printing press, the steam engine and the computer each changed how quickly knowledge "
    "could travel, and each was built on the work of many people whose names are now forgotten."
)


def tensor_type(name: str, shape: tuple[int, ...], quant: str) -> str:
    """"f32", "f16" or "q8_0": the type tensor `name` of `shape` (PyTorch order) gets under `quant`."""
    if quant == "f32" or len(shape) < 2 or name in KEEP_F32:
        return "f32"
    if quant == "q8_0" and shape[-1] % Q8_BLOCK == 0:
        return "q8_0"
    return "f16"


def file_type(quant: str, gguf: Any) -> int:
    """general.file_type for `quant`: llama.cpp's name for what most of the file holds."""
    return int({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])


def encode_tensor(t: torch.Tensor, kind: str, gguf: Any) -> tuple[np.ndarray, Any]:
    """(array to write, raw GGML type) for tensor `t` stored as `kind`."""
    a = t.detach().to(torch.float32).cpu().numpy()
    if kind == "f32":
        return a, gguf.GGMLQuantizationType.F32
    if kind == "f16":
        return a.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def round_trip(t: torch.Tensor, kind: str, gguf: Any) -> torch.Tensor:
    """`t` as it reads back from the file after being stored as `kind`."""
    data, qtype = encode_tensor(t, kind, gguf)
    if kind == "f32":
        return t.detach().to(torch.float32)
    values = gguf.quants.dequantize(data, qtype) if kind == "q8_0" else data.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(values)).reshape(t.shape)


def next_token_agreement(model: GPT, tok: Tokenizer, quant: str, gguf: Any) -> tuple[float, int]:
    """(fraction of positions whose greedy next token survives `quant`, number of positions) on SAMPLE_TEXT."""
    ids = tok.encode(SAMPLE_TEXT)
    T = min(model.config.block_size, len(ids))
    windows = torch.tensor([ids[i : i + T] for i in range(0, len(ids) - T + 1, T)])
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in rounded.named_parameters():  # a tied matrix is one parameter: rounded once
            p.copy_(round_trip(p, tensor_type(name, tuple(p.shape), quant), gguf))
        a = model(windows)[0].argmax(-1)
        b = rounded(windows)[0].argmax(-1)
    return float((a == b).float().mean()), int(a.numel())
