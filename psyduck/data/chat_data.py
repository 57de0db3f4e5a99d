"""Conversations for fine-tuning: a jsonl file of them, or the built-in offline set `wiki-vital-qa`.

A conversation is a list of messages in the format OpenAI and Hugging Face use,

    {"messages": [{"role": "user", "content": "What is Paris?"}, {"role": "assistant", "content": "..."}]}

one JSON object per line of a ``.jsonl`` file. Every line is checked before training starts, and
all bad lines are named by number in one message, so a user fixes the file in one go.

``wiki-vital-qa`` is made from the embedded corpus's own fields (psyduck/data/sources.py): each
article has a title, a one-line description and an extract, which answer three questions:

    What is X?               -> the extract's first sentence
    Tell me about X.         -> the extract's first sentences (up to about 600 characters)
    Describe X in one line.  -> the description
    What is X? / Tell me more.  (two turns: the first sentence, then the next ones)

No network, no model writes the answers: the text is Wikipedia's. Articles are held out by a hash
of their title (1 in 20), so the held-out questions are about articles the fine-tuning never asked
about, and the split is the same on every machine and in every corpus order.

Both sources give a `ChatSplits`: "train" and "val" lists of conversations.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psyduck.chat import check_messages
from psyduck.data.sources import wiki_vital_file
from psyduck.errors import PsyDuckError

WIKI_VITAL_QA = "wiki-vital-qa"
BUILT_IN = (WIKI_VITAL_QA,)
HELD_OUT = 20  # 1 in HELD_OUT conversations (articles, for wiki-vital-qa) go to "val"
MAX_ANSWER_CHARS = 600  # "Tell me about X." stops at the last sentence that fits
MAX_REPORTED = 5  # bad lines named in the error message
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")  # crude, but Wikipedia's prose obliges

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class ChatSplits:
    """Conversations to learn from ("train") and to measure on ("val")."""

    train: list[Conversation]
    val: list[Conversation]

    def split(self, name: str) -> list[Conversation]:
        """The conversations of "train" or "val"."""
        return {"train": self.train, "val": self.val}[name]

    def limited(self, n: int | None) -> ChatSplits:
        """At most `n` training conversations, a fixed random choice (quick trials); val stays whole."""
        if n is None or n >= len(self.train):
            return self
        if n < 1:
            raise PsyDuckError(f"--max-conversations must be a positive number, got {n}")
        order = list(range(len(self.train)))
        random.Random(0).shuffle(order)
        return ChatSplits(train=[self.train[i] for i in sorted(order[:n])], val=self.val)


def held_out(key: str) -> bool:
    """Whether the item named `key` belongs to the held-out part (a stable hash, 1 in HELD_OUT)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % HELD_OUT == 0


def load_chat_data(spec: str) -> ChatSplits:
    """The conversations `--chat` names: a built-in set's name, or a jsonl file's path."""
    if spec == WIKI_VITAL_QA:
        return wiki_vital_qa()
    path = Path(spec)
    if not path.is_file():
        raise PsyDuckError(
            f"chat data not found: {spec}; pass a .jsonl file of {{\"messages\": [...]}} lines or {', '.join(BUILT_IN)}"
        )
    return split_conversations(read_conversations(path))


def split_conversations(conversations: list[Conversation]) -> ChatSplits:
    """Hold out 1 in HELD_OUT conversations by a hash of their text (at least one when there are two)."""
    keys = [json.dumps(c, sort_keys=True) for c in conversations]
    val_index = {i for i, k in enumerate(keys) if held_out(k)}
    if not val_index and len(conversations) >= 2:
        val_index = {len(conversations) - 1}
    if len(val_index) == len(conversations):
        raise PsyDuckError("the chat data has too few conversations to hold one out for evaluation; give at least 2")
    return ChatSplits(
        train=[c for i, c in enumerate(conversations) if i not in val_index],
        val=[c for i, c in enumerate(conversations) if i in val_index],
    )


def read_conversations(path: str | Path) -> list[Conversation]:
    """The conversations of a jsonl file; PsyDuckError naming every bad line (the first few) by number."""
    path = Path(path)
    conversations: list[Conversation] = []
    problems: list[str] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            conversations.append(parse_line(line))
        except PsyDuckError as e:
            problems.append(f"line {number}: {e}")
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED]) + ("; ..." if len(problems) > MAX_REPORTED else "")
        raise PsyDuckError(f"{path} has {len(problems)} bad line{'s' * (len(problems) > 1)} ({shown}); fix or remove them")
    if not conversations:
        raise PsyDuckError(f"{path} holds no conversations; write one {{\"messages\": [...]}} object per line")
    return conversations


def parse_line(line: str) -> Conversation:
    """One jsonl line -> its messages (role and content only), or PsyDuckError saying what is wrong."""
    try:
        obj: Any = json.loads(line)
    except json.JSONDecodeError as e:
        raise PsyDuckError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or "messages" not in obj:
        raise PsyDuckError('not an object with a "messages" list')
    messages = obj["messages"]
    check_messages(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise PsyDuckError("no assistant message to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def sentences(text: str) -> list[str]:
    """The sentences of a Wikipedia extract (cut after . ! ? before a capital, digit or quote)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _leading(parts: list[str], limit: int) -> str:
    """As many of the first sentences as fit in `limit` characters (always at least one)."""
    out = parts[0]
    for s in parts[1:]:
        if len(out) + 1 + len(s) > limit:
            break
        out += " " + s
    return out


def _exchange(*turns: str) -> Conversation:
    """user, assistant, user, assistant... messages from their texts."""
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def article_conversations(title: str, description: str, extract: str) -> Iterator[Conversation]:
    """The built-in questions about one article, answered from its own fields."""
    parts = sentences(extract)
    if not parts:
        return
    yield _exchange(f"What is {title}?", parts[0])
    yield _exchange(f"Tell me about {title}.", _leading(parts, MAX_ANSWER_CHARS))
    if description.strip():
        line = description.strip()
        yield _exchange(f"Describe {title} in one line.", line[0].upper() + line[1:] + ("" if line.endswith(".") else "."))
    if len(parts) > 1:
        yield _exchange(f"What is {title}?", parts[0], "Tell me more.", _leading(parts[1:], MAX_ANSWER_CHARS))


def wiki_vital_qa() -> ChatSplits:
    """The built-in offline chat set: about 40,000 conversations from 10,033 articles' own fields."""
    articles: dict[str, dict[str, str]] = json.loads(wiki_vital_file().read_text(encoding="utf-8"))
    train: list[Conversation] = []
    val: list[Conversation] = []
    for article in articles.values():
        title = article.get("title", "").strip()
        if not title:
            continue
        target = val if held_out(title) else train
        target.extend(article_conversations(title, article.get("description", ""), article.get("extract", "")))
    return ChatSplits(train=train, val=val)
