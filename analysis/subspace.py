"""``python -m analysis.subspace``: the command :mod:`analysis.cli.subspace` (``--help`` explains it)."""

import sys

from analysis.cli.subspace import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
