"""The one exception type users see.

Every mistake a user can make (a missing folder, an unknown preset, a prompt the tokenizer cannot
encode, a truncated checkpoint...) is raised as a `PsyDuckError` whose message is one line naming the
problem and the fix. The CLI prints that line and exits with status 2 instead of a traceback.
"""


class PsyDuckError(Exception):
    """A user-facing error: one line, saying what is wrong and how to fix it."""
