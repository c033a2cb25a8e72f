"""``python -m analysis.collection``: the command :mod:`analysis.cli.collection` (``--help`` explains it)."""

import sys

from analysis.cli.collection import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
