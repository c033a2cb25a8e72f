"""``python -m analysis.resize``: the command :mod:`analysis.cli.resize` (``--help`` explains it)."""

import sys

from analysis.cli.resize import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
