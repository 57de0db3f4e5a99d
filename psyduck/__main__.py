"""`python -m psyduck ...` (and `torchrun -m psyduck train ...`) run the CLI."""

import sys

from psyduck.cli import main

sys.exit(main())
