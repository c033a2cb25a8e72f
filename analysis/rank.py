"""``python -m analysis.rank``: the command :mod:`analysis.cli.rank` (``--help`` explains it)."""

import sys

from analysis.cli.rank import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
