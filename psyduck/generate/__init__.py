"""Generation: from a trained model and a prompt to new tokens and text.

    from psyduck.generate import GenerationParams, generate, stream
    params = GenerationParams(max_new_tokens=100, temperature=0.7, top_k=50)
    out = generate(model, idx, params)                   # (B, T + n) token ids
    for token in stream(model, idx, params):             # one (B,) tensor per step
        ...

The rooms, in the order a token passes them:
- params: `GenerationParams`, what to generate, checked once where it is made;
- cache: `KVCache`, every block's keys and values, so each step feeds only the newest token;
- decode_weights: `DecodeWeights`, the model's twin with weight copies for one-row products on CPUs;
- sampling: logits -> the next token (temperature, top-k, top-p);
- loop: `generate` and `stream`, the decode loop with the window roll and the float16 fallback;
- text: `TextStream` and `stream_text`, ids -> whole characters, cut at stop strings;
- threads: `decode_threads`, how many CPU threads a decode step should use (one, for small models).
"""

from __future__ import annotations

from psyduck.generate.cache import KVCache, LayerCache
from psyduck.generate.decode_weights import DecodeWeights
from psyduck.generate.loop import generate, stream
from psyduck.generate.params import MIN_TEMPERATURE, MIN_TOP_P, GenerationParams
from psyduck.generate.sampling import draw_uniforms, sample_next
from psyduck.generate.text import TextStream, stream_text
from psyduck.generate.threads import check_threads, decode_threads

__all__ = [
    "DecodeWeights", "GenerationParams", "KVCache", "LayerCache", "MIN_TEMPERATURE", "MIN_TOP_P", "TextStream",
    "check_threads", "decode_threads", "draw_uniforms", "generate", "sample_next", "stream", "stream_text",
]
