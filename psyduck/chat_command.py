"""CLI wiring for `psyduck finetune` and `psyduck chat` (psyduck/cli.py calls `register`).

    psyduck finetune runs/demo --chat wiki-vital-qa --out runs/chat [--max-iters N] [key=value ...]
    psyduck chat runs/chat [--system "Be brief."]

`finetune` is psyduck/train/finetune.py; `chat` is a terminal loop over the run's chat template
(psyduck/chat.py) and `stream_text`: each reply is printed as it is generated, the conversation is
kept (oldest turns dropped when it outgrows the context), `/reset` starts over, Ctrl-D (end of
input) exits and Ctrl-C stops a reply midway. With stdin piped, it answers each line in turn.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from psyduck.chat import ChatTemplate, Message
from psyduck.cli import TRAIN_FLAGS
from psyduck.errors import PsyDuckError

if TYPE_CHECKING:
    from psyduck.tokenizer import Tokenizer

NOT_FOR_FINETUNE = ("data", "block_size")  # the data is --chat; the context is the base model's
HELP = "commands: /reset clears the conversation, /exit (or Ctrl-D) leaves, Ctrl-C stops a reply"


def cmd_finetune(args: argparse.Namespace) -> None:
    import json

    from psyduck.hardware import keep_freed_memory
    from psyduck.train.finetune import finetune

    out = args.out or f"runs/{Path(args.run).name}-chat"
    flags = [f"{key}={getattr(args, name)}" for name, (key, _) in TRAIN_FLAGS.items()
             if name not in NOT_FOR_FINETUNE and getattr(args, name, None) is not None]
    if args.minutes is not None:  # as `train --minutes`: a time budget in train.max_seconds
        if getattr(args, "max_seconds", None) is not None:
            raise PsyDuckError("--minutes and --max-seconds both set the time budget; give only one of them")
        flags.append(f"train.max_seconds={args.minutes * 60.0}")
    keep_freed_memory()  # as `train`: this process only trains
    result = finetune(
        args.run, args.chat, out, [*flags, *args.overrides], resume=args.resume, progress=not args.no_progress,
        max_conversations=args.max_conversations,
    )
    print(json.dumps(result))
    print(f"talk to it: psyduck chat {out}", file=sys.stderr)


def fit_history(template: ChatTemplate, tokenizer: Tokenizer, messages: Sequence[Message], budget: int) -> list[int]:
    """The prompt ids of `messages`, dropping the oldest turns (never a system message) until they fit `budget`."""
    kept = list(messages)
    while True:
        ids = template.encode(tokenizer, kept)
        droppable = [i for i, m in enumerate(kept[:-1]) if m["role"] != "system"]
        if len(ids) <= budget or not droppable:
            return ids  # a single message longer than the context: the decode loop keeps its end
        del kept[droppable[0]]


def reply_to(session: ChatSession, text: str, out: TextIO) -> None:
    """Stream one reply to `text` onto `out` and keep both in the history."""
    from psyduck.chat import ReplyStream
    from psyduck.generate import stream_text

    session.history.append({"role": "user", "content": text})
    ids = fit_history(session.template, session.tokenizer, session.history, session.budget)
    reply = ReplyStream(session.template)  # without the space the plain template leaves to the model
    try:
        for piece in stream_text(session.model, session.tokenizer, ids, session.params):
            out.write(reply.push(piece))
            out.flush()
    except KeyboardInterrupt:
        out.write(reply.push("", last=True) + " [stopped]")
    else:
        out.write(reply.push("", last=True))
    out.write("\n")
    out.flush()
    session.history.append({"role": "assistant", "content": reply.text.strip()})


class ChatSession:
    """A loaded run, its template, the sampling knobs, and the conversation so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        from psyduck.chat import load_template
        from psyduck.generate import GenerationParams
        from psyduck.hardware import pick_device
        from psyduck.runs import load_run

        self.template = load_template(args.run)
        self.params = GenerationParams(
            args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
            stop=self.template.stop_strings, exact=args.exact,
        )
        self.model, self.tokenizer = load_run(args.run, device=pick_device(args.device), checkpoint=args.checkpoint)
        block = self.model.config.block_size
        self.budget = max(1, block - min(args.max_new_tokens, block // 2))  # room left for the reply
        self.system: list[Message] = [{"role": "system", "content": args.system}] if args.system else []
        self.history: list[Message] = list(self.system)

    def reset(self) -> None:
        self.history = list(self.system)


def cmd_chat(args: argparse.Namespace) -> None:
    session = ChatSession(args)
    interactive = sys.stdin.isatty()
    note = "" if session.template.markers else " (a base model: the plain User:/Assistant: template)"
    print(f"chatting with {args.run}{note}; {HELP}", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
        elif text in ("/exit", "/quit"):
            break
        elif text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", file=sys.stderr)
        else:
            if interactive:
                sys.stdout.write("bot> ")
            reply_to(session, text, sys.stdout)
    if interactive:
        print()


def register(subparsers: Any) -> None:  # argparse's subparsers action (a private type)
    s = subparsers.add_parser(
        "finetune", help="fine-tune a run into a chat model (supervised, on conversations)",
        description="Supervised fine-tuning on conversations: role markers added to the tokenizer, loss on the "
        "assistant's tokens only, evaluation on held-out conversations. Takes train's flags and key=value.",
    )
    s.add_argument("run", help="the base run (trained here or made by import-hf)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="any config key, e.g. lr=1e-4 train.eval_interval=25")
    s.add_argument("--chat", required=True, help='a .jsonl file of {"messages": [...]} lines, or wiki-vital-qa (built in)')
    s.add_argument("--out", help="the new run folder (default runs/<run>-chat)")
    s.add_argument("--resume", action="store_true", help="continue the fine-tune in --out from its newest checkpoint")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--minutes", type=float, default=None, help="fine-tune for this long (train.max_seconds)")
    s.add_argument("--max-conversations", type=int, help="train on a fixed random subset of this many (quick trials)")
    for name, (_, typ) in TRAIN_FLAGS.items():
        if name not in NOT_FOR_FINETUNE:
            s.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None)
    s.set_defaults(func=cmd_finetune)

    s = subparsers.add_parser("chat", help="talk to a run in the terminal (streaming)", description=HELP)
    s.add_argument("run")
    s.add_argument("--system", help="a system message that opens the conversation")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--top-k", type=int, default=50)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--exact", action="store_true", help="multiply in float32 (see psyduck generate --help)")
    s.add_argument("--checkpoint", help="a checkpoint folder, or 'best' (default: the newest loadable)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_chat)
