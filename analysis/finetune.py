"""``python -m analysis.finetune``: the command :mod:`analysis.cli.finetune` (``--help`` explains it)."""

import sys

from analysis.cli.finetune import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
