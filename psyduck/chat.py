"""Conversations as tokens: the chat template, its role markers, and checking a list of messages.

A language model only continues text, so a conversation has to be written out as one text before
the model can take part in it. A *chat template* is that writing convention:

    <|endoftext|><|system|>Be brief.<|end|>
    <|user|>What is Paris?<|end|>
    <|assistant|>The capital of France.<|end|>
    <|user|>...

Each turn is a role *header*, the message, and an *end* marker. Asking the model for a reply means
ending the text with the assistant's header alone (the "generation prompt") and letting it write
until it produces the end marker. The markers become *special tokens* when the run's tokenizer has
them (`psyduck finetune` adds them; psyduck/tokenizer.py): one id each, which no user text can
produce, so a message cannot forge a turn. A conversation starts with <|endoftext|>, as every
document in the training shards does.

A base model that never saw such markers gets `plain_template()` instead, a convention ordinary
text already contains ("User: ...\\nAssistant: ..."). Its generation prompt is "Assistant:" with no
trailing space: BPE tokenizers keep a space with the word after it (" Paris" is one token), so the
model writes the space itself; `ChatTemplate.reply` strips it, and `ReplyStream` does the same to a
reply shown as it is generated. `psyduck chat` and the server's /v1/chat/completions both answer
with `reply`'s text, whole or streamed, so the two agree.

One template object does four jobs: `render` (the text), `encode` (the ids the model reads),
`encode_for_training` (ids plus a loss mask: 1 on the assistant's tokens, which is what supervised
fine-tuning learns), and `jinja` (the same rules as a Jinja template for Hugging Face's
`tokenizer.apply_chat_template` and GGUF's `tokenizer.chat_template`). It is stored with the run as
chat_template.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from psyduck.errors import PsyDuckError
from psyduck.io import write_json_atomic

ROLES = ("system", "user", "assistant")
TEMPLATE_FILE = "chat_template.json"
EOT = "<|endoftext|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
ROLE_MARKERS = (SYSTEM, USER, ASSISTANT, END)  # the special tokens `psyduck finetune` adds

Message = Mapping[str, Any]


class ChatTokenizer(Protocol):
    """What a template needs from a tokenizer (psyduck.tokenizer.Tokenizer is one)."""

    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def special_token_id(self, text: str) -> int | None: ...


@dataclass(frozen=True)
class ChatTemplate:
    """One way of writing a conversation as text; `render`, `encode` and `jinja` all follow it.

    A turn is `header[role] + content + end + separator`. `begin` opens the conversation.
    `markers` are the strings written as one special token by a tokenizer that has them.
    The assistant's content and end are what fine-tuning trains (the mask of `encode_for_training`).
    """

    name: str
    system: str
    user: str
    assistant: str
    end: str
    separator: str
    begin: str = EOT
    markers: tuple[str, ...] = ()

    def header(self, role: str) -> str:
        """The text that opens a turn of `role`."""
        return {"system": self.system, "user": self.user, "assistant": self.assistant}[role]

    @property
    def generation_prompt(self) -> str:
        """What ends a prompt that asks for a reply: the assistant's header, trailing spaces left to the model."""
        return self.assistant.rstrip()

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text that ends an assistant turn: the end marker, or (plain template) the next turn's header."""
        if self.end.strip():
            return tuple(dict.fromkeys((self.end.strip(), *self.markers, EOT)))
        heads = (self.user, self.system, self.assistant)
        return tuple(dict.fromkeys(self.end + h.rstrip() for h in heads))

    @property
    def header_rest(self) -> str:
        """What the generation prompt leaves of the assistant's header for the model to write (a space, or "")."""
        return self.assistant[len(self.generation_prompt):]

    def reply(self, generated: str) -> str:
        """The assistant's message from the generated text: without the header's trailing space."""
        rest = self.header_rest
        return generated[len(rest):] if rest and generated.startswith(rest) else generated

    def pieces(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> Iterator[tuple[str, bool]]:
        """The conversation as (text, trained) pieces, each encoded on its own.

        Encoding piece by piece keeps a generation prompt's ids a prefix of the ids of the same
        conversation with its reply, which is what makes training and chatting agree.
        """
        check_messages(messages)
        if self.begin:
            yield self.begin, False
        for m in messages:
            head = self.header(m["role"])
            trained = m["role"] == "assistant"
            stripped = head.rstrip()
            yield stripped, False
            yield head[len(stripped):] + m["content"], trained
            yield self.end, trained
            yield self.separator, False
        if add_generation_prompt:
            yield self.generation_prompt, False

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The text of the conversation (ending with the generation prompt when asked)."""
        return "".join(text for text, _ in self.pieces(messages, add_generation_prompt))

    def _ids(self, tokenizer: ChatTokenizer, text: str) -> list[int]:
        """A piece's ids: one special id for a marker the tokenizer knows, else ordinary text."""
        if text in self.markers or text == EOT:
            special = tokenizer.special_token_id(text)
            if special is not None:
                return [special]
        return tokenizer.encode(text) if text else []

    def encode(self, tokenizer: ChatTokenizer, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """The ids the model reads for this conversation (role markers as special tokens when known)."""
        return [i for text, _ in self.pieces(messages, add_generation_prompt) for i in self._ids(tokenizer, text)]

    def encode_for_training(self, tokenizer: ChatTokenizer, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
        """Ids and a loss mask of the same length: 1 on the assistant's tokens and their end marker."""
        return self.encode_conversations(tokenizer, [messages])[0]

    def encode_conversations(
        self, tokenizer: ChatTokenizer, conversations: Sequence[Sequence[Message]]
    ) -> list[tuple[list[int], list[int]]]:
        """`encode_for_training` of many conversations, with one batched tokenizer call for all their pieces.

        Tens of thousands of conversations are a few hundred thousand short pieces; encoding them
        in one batch runs on every core instead of paying a call per piece.
        """
        pieces = [list(self.pieces(c, add_generation_prompt=False)) for c in conversations]
        ids_of: dict[str, list[int]] = {"": []}
        for marker in (*self.markers, EOT):
            special = tokenizer.special_token_id(marker)
            if special is not None:
                ids_of[marker] = [special]
        texts = sorted({text for p in pieces for text, _ in p} - ids_of.keys())
        ids_of.update(zip(texts, tokenizer.encode_batch(texts), strict=True))
        encoded = []
        for p in pieces:
            ids: list[int] = []
            mask: list[int] = []
            for text, trained in p:
                ids += ids_of[text]
                mask += [int(trained)] * len(ids_of[text])
            encoded.append((ids, mask))
        return encoded

    @property
    def jinja(self) -> str:
        """The template in Jinja, for Hugging Face's `chat_template` and GGUF's `tokenizer.chat_template`.

        One line with every literal inside `{{ }}`, so Hugging Face's `trim_blocks`/`lstrip_blocks`
        settings change nothing; it renders exactly what `render` does.
        """
        q = json.dumps  # a JSON string is a valid Jinja string literal (same escapes)
        heads = "".join(
            f"{{% {'if' if i == 0 else 'elif'} message['role'] == {q(role)} %}}{{{{ {q(self.header(role))} }}}}"
            for i, role in enumerate(ROLES)
        )
        return (
            (f"{{{{ {q(self.begin)} }}}}" if self.begin else "")
            + f"{{% for message in messages %}}{heads}{{% endif %}}"
            + f"{{{{ message['content'] }}}}{{{{ {q(self.end + self.separator)} }}}}{{% endfor %}}"
            + f"{{% if add_generation_prompt %}}{{{{ {q(self.generation_prompt)} }}}}{{% endif %}}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved as RUN/chat_template.json (with the Jinja form, for readers of the file)."""
        d = asdict(self)
        d["markers"] = list(self.markers)
        d["jinja"] = self.jinja
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChatTemplate:
        """Read `to_dict`'s form back (KeyError/TypeError on a malformed one; `load_template` words it)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["markers"] = tuple(values.get("markers", ()))
        template = cls(**values)
        for f in fields(cls):
            value = getattr(template, f.name)
            ok = all(isinstance(x, str) for x in value) if f.name == "markers" else isinstance(value, str)
            if not ok:
                raise TypeError(f"{f.name} must be text")
        return template

    def save(self, run_dir: str | Path) -> Path:
        """Write RUN/chat_template.json atomically."""
        return write_json_atomic(Path(run_dir) / TEMPLATE_FILE, self.to_dict())


class ReplyStream:
    """`ChatTemplate.reply` of a reply shown as it is generated: generated pieces in, shown pieces out.

    The pieces shown add up to `reply` of everything generated: text that may still be the start of
    the header's trailing space (`header_rest`) is held back until it is known not to be.
    """

    def __init__(self, template: ChatTemplate) -> None:
        self.template = template
        self.generated = ""
        self.shown = 0  # characters of `reply(generated)` handed out so far

    def push(self, piece: str, last: bool = False) -> str:
        """Add the next generated text; returns what can be shown now (everything left, if `last`)."""
        self.generated += piece
        rest = self.template.header_rest
        if not last and len(self.generated) < len(rest) and rest.startswith(self.generated):
            return ""
        visible = self.template.reply(self.generated)
        out, self.shown = visible[self.shown :], len(visible)
        return out

    @property
    def text(self) -> str:
        """The reply so far, as `reply` gives it."""
        return self.template.reply(self.generated)


def marker_template() -> ChatTemplate:
    """The template `psyduck finetune` gives a run: role markers as special tokens (Phi-3's names)."""
    return ChatTemplate(
        name="psyduck-chat", system=SYSTEM, user=USER, assistant=ASSISTANT, end=END, separator="\n",
        markers=ROLE_MARKERS,
    )


def plain_template() -> ChatTemplate:
    """The documented template for a base model without one: "System: ..", "User: ..", "Assistant: ..".

        <|endoftext|>System: Be brief.
        User: What is Paris?
        Assistant: The capital of France.
        User: ...
        Assistant:

    Each turn ends with a newline; a reply ends where the model starts a new "User:" line.
    """
    return ChatTemplate(name="plain", system="System: ", user="User: ", assistant="Assistant: ", end="\n", separator="")


def load_template(run_dir: str | Path | None) -> ChatTemplate:
    """The run's chat template (RUN/chat_template.json), or `plain_template()` when it has none (or
    there is no run folder: a model served straight from Python)."""
    if run_dir is None:
        return plain_template()
    path = Path(run_dir) / TEMPLATE_FILE
    if not path.is_file():
        return plain_template()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return ChatTemplate.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PsyDuckError(
            f"chat template {path} is corrupt ({e}); delete it to use the plain template, or fine-tune again"
        ) from None


def check_messages(messages: Any) -> None:
    """Raise PsyDuckError naming the first problem: not a list, empty, missing keys, unknown role, non-text content."""
    if not isinstance(messages, (list, tuple)):
        raise PsyDuckError(f"messages must be a list of {{'role', 'content'}} objects, got {type(messages).__name__}")
    if not messages:
        raise PsyDuckError("messages is empty; give at least one {'role': 'user', 'content': ...} message")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise PsyDuckError(f"{where} must be an object with 'role' and 'content', got {type(m).__name__}")
        missing = [k for k in ("role", "content") if k not in m]
        if missing:
            raise PsyDuckError(f"{where} has no {' or '.join(repr(k) for k in missing)}; give each message a role and a content")
        if m["role"] not in ROLES:
            raise PsyDuckError(f"{where}.role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise PsyDuckError(f"{where}.content must be a string, got {type(m['content']).__name__}")
