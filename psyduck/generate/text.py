"""Generated ids -> text that is safe to show, as it is generated.

A byte-level tokenizer may split one character (é, 東, an emoji) across several tokens; decoding
token by token would show U+FFFD halves. `TextStream` waits for the rest of a multi-byte character,
cuts the text at the first stop string, and holds back text that might be the start of one (so a
reader never sees part of "\\n\\n" before the decision to stop there). The CLI prints its pieces,
the server sends them, the trainer keeps them as its samples.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from psyduck.generate.loop import stream
from psyduck.generate.params import GenerationParams
from psyduck.model import GPT
from psyduck.tokenizer import Tokenizer

# A character is at most 4 UTF-8 bytes, so at most 4 byte-level tokens; text that still does not
# decode after this many tokens is invalid UTF-8 and is shown as U+FFFD rather than held forever.
MAX_PENDING_TOKENS = 4


class TextStream:
    """One row's ids -> text, with multi-byte characters kept whole and stop strings cut out.

    The end-of-text token ends the text (`finish_reason` "stop"), unless `ignore_eos`: then it is
    skipped silently (a document boundary inside the continuation).
    """

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = (), ignore_eos: bool = False) -> None:
        self.tok = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ignore_eos = ignore_eos
        self.text = ""  # every character decoded so far (cut at a stop string once one is found)
        self.sent = 0  # how much of `text` has been handed out
        self.pending: list[int] = []  # ids whose bytes do not yet make whole characters
        self.checked = 0  # `text` before this offset is known to contain no stop string
        self.tokens = 0
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int, last: bool = False) -> str:
        """Add one generated id; returns the text that may be shown now. `last`: max_tokens reached."""
        if self.finished:
            return ""
        self.tokens += 1
        if token == self.tok.eot_id and not self.ignore_eos:
            return self.finish("stop")
        if token != self.tok.eot_id:  # with ignore_eos the marker itself is not shown
            self.pending.append(token)
        piece = self.tok.decode(self.pending)
        if not piece.endswith("\ufffd") or len(self.pending) >= MAX_PENDING_TOKENS:
            self.text += piece
            self.pending = []
        if self._cut_at_stop():
            return self.finish("stop")
        if last:
            return self.finish("length")
        end = len(self.text) - self._held_back()
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out

    def finish(self, reason: str) -> str:
        """End the text now ("stop" or "length"); returns whatever was still held back."""
        if self.pending:  # the end came inside a character: show what there is (U+FFFD)
            self.text += self.tok.decode(self.pending)
            self.pending = []
            if self._cut_at_stop():
                reason = "stop"
        self.finish_reason = reason
        out, self.sent = self.text[self.sent :], len(self.text)
        return out

    def _cut_at_stop(self) -> bool:
        """Truncate `text` before the first stop string, if one has appeared; True if so."""
        if not self.stop:
            return False
        start = max(0, self.checked - max(map(len, self.stop)) + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        self.checked = len(self.text)
        if not hits:
            return False
        self.text = self.text[: min(hits)]
        return True

    def _held_back(self) -> int:
        """Length of the longest end of `text` that could still grow into a stop string."""
        for k in range(min(len(self.text), max(map(len, self.stop), default=0) - 1), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0


def stream_text(model: GPT, tokenizer: Tokenizer, prompt: list[int], params: GenerationParams) -> Iterator[str]:
    """One continuation of `prompt` (token ids) as pieces of text, shown as soon as they are whole.

    Ends at the end-of-text token (unless params.ignore_eos), at a stop string, or after
    params.max_new_tokens tokens. What `psyduck generate` prints and the trainer's samples keep.
    """
    device = next(model.parameters()).device
    text = TextStream(tokenizer, params.stop, params.ignore_eos)
    steps = stream(model, torch.tensor([prompt], device=device), params, eot_id=tokenizer.eot_id)
    try:
        for step, token in enumerate(steps):
            piece = text.push(int(token[0]), last=step + 1 == params.max_new_tokens)
            if piece:
                yield piece
            if text.finished:
                return
    finally:
        steps.close()
    rest = "" if text.finished else text.finish("length")  # max_new_tokens 0: nothing was generated
    if rest:
        yield rest
