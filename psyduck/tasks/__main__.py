"""`python -m psyduck.tasks ARGS` = `lm_eval ARGS` with `--model psyduck` registered (see the package docstring)."""

from __future__ import annotations

import sys

from psyduck.errors import PsyDuckError
from psyduck.tasks.run import INSTALL_HINT


def main() -> int:
    """Register the psyduck model, then run the harness's own command line on sys.argv."""
    try:
        from lm_eval.__main__ import cli_evaluate

        import psyduck.tasks.harness  # noqa: F401  (registers "psyduck" with the harness)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("lm_eval"):
            print(f"psyduck: error: {INSTALL_HINT}", file=sys.stderr)
            return 2
        raise
    sys.argv[0] = "lm_eval"
    try:
        cli_evaluate()
    except PsyDuckError as e:
        print(f"psyduck: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
