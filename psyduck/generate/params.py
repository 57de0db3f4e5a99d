"""What to generate: one frozen `GenerationParams`, checked once, where it is made.

The CLI, the server, the trainer's samples and the Python API all describe a generation with it:
how many tokens, how to sample them (temperature, top-k, top-p, seed), and when to stop (the
end-of-text token, stop strings). An impossible value is refused here, with one line naming it,
so nothing downstream re-checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from psyduck.errors import PsyDuckError

# A temperature this small is greedy decoding in all but name; dividing logits by it would overflow
# float32 into inf and NaN probabilities, so the sampler treats it as 0.
MIN_TEMPERATURE = 1e-6
# top_p this small keeps only the likeliest token anyway; a denormal like 5e-324 is 0 in float32,
# so the sampler raises a smaller top_p to this.
MIN_TOP_P = 1e-6


@dataclass(frozen=True)
class GenerationParams:
    """How to continue a prompt. The field order is the server's: `GenerationParams(16, 0.7)` works.

    - max_new_tokens: tokens to generate (fewer if every row ends first);
    - temperature: 0 is greedy; below 1 sharper, above 1 flatter (see `psyduck.generate.sampling`);
    - top_k, top_p: keep only the k likeliest tokens / the smallest nucleus of mass p (None: all);
    - seed: the same seed, prompt and parameters give the same tokens (None: torch's global RNG);
    - stop: strings that end a continuation as text (`TextStream`; not included in the text);
    - ignore_eos: keep going past the end-of-text token (exactly max_new_tokens unless a stop string);
    - exact: on CPUs keep every product in float32 instead of the float16 weight copies
      (`psyduck.generate.decode_weights`).
    """

    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    exact: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise PsyDuckError(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}")
        if self.temperature != self.temperature or self.temperature < 0:  # NaN or negative
            raise PsyDuckError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise PsyDuckError(f"top_k must be a positive integer (or omitted), got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise PsyDuckError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))  # "" would stop at once

    def with_knobs(self, **knobs: Any) -> GenerationParams:
        """A copy with some fields changed. The seed's spelling `max_new_token=` works too."""
        if "max_new_token" in knobs:
            knobs["max_new_tokens"] = knobs.pop("max_new_token")
        return dataclasses.replace(self, **knobs) if knobs else self
