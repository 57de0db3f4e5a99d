"""`python -m psyduck ...` (and `torchrun -m psyduck train ...`) run the CLI."""

import sys

from psyduck.cli import main

if __name__ == "__main__":  # a child process (the serving engine's) imports this module without running it
    sys.exit(main())
