"""Conversations to tokens: the chat template (minimal version; the chat room's fuller one replaces it).

    template = load_template("runs/chat")                   # the run's template, or the plain one
    ids = template.encode(tokenizer, messages)               # ends with the assistant's turn opened
    check_messages(messages)                                 # a PsyDuckError naming the bad message

A conversation is OpenAI's list of messages, `{"role": "system"|"user"|"assistant", "content": str}`.
The plain template, for a base model that was never fine-tuned to chat, writes it as a transcript
("User: ...\\nAssistant: ...\\n") and opens the assistant's turn with "Assistant:"; a reply ends at
the end-of-text token or where the model starts the next turn (`stop_strings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psyduck.errors import PsyDuckError
from psyduck.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation is written as text: a prefix per role, and the strings that end a reply."""

    prefixes: dict[str, str]
    generation_prompt: str
    stop_strings: tuple[str, ...]

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The conversation as text; with `add_generation_prompt`, the assistant's turn opened after it."""
        check_messages(messages)
        text = "".join(f"{self.prefixes[m['role']]}{m['content']}\n" for m in messages)
        return text + (self.generation_prompt if add_generation_prompt else "")

    def encode(self, tokenizer: Tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """The conversation as token ids, ready to be continued by the assistant's reply."""
        return tokenizer.encode(self.render(messages, add_generation_prompt))


def plain_template() -> ChatTemplate:
    """The documented template for base models: "System: ", "User: ", "Assistant: " lines."""
    return ChatTemplate(
        {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}, "Assistant:", ("\nUser:", "\nSystem:"),
    )


def load_template(run_dir: str | Path | None) -> ChatTemplate:
    """The template stored with a run; a run without one (or no run) gets `plain_template()`."""
    return plain_template()


def check_messages(messages: Any) -> None:
    """Refuse a conversation that is not a non-empty list of {role, content: str} messages."""
    if not isinstance(messages, list) or not messages:
        raise PsyDuckError("messages must be a non-empty list of {\"role\", \"content\"} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise PsyDuckError(f"messages[{i}] must be an object with a role and a content")
        if m.get("role") not in ROLES:
            raise PsyDuckError(f"messages[{i}] has role {m.get('role')!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise PsyDuckError(f"messages[{i}].content must be a string (text), got {type(m.get('content')).__name__}")
