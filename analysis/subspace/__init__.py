"""``python -m analysis.subspace A B``: compare two adapters module by module."""

from analysis.subspace.cli import main

__all__ = ["main"]
