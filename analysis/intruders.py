"""``python -m analysis.intruders``: the command :mod:`analysis.cli.intruders` (``--help`` explains it)."""

import sys

from analysis.cli.intruders import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
