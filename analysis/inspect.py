"""``python -m analysis.inspect``: the command :mod:`analysis.cli.inspect` (``--help`` explains it)."""

import sys

from analysis.cli.inspect import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
