"""``python -m analysis.merge``: the command :mod:`analysis.cli.merge` (``--help`` explains it)."""

import sys

from analysis.cli.merge import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
