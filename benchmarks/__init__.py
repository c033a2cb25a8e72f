"""Benchmarks of the toolkit (issue 5): ``python -m benchmarks`` from the repository root.

Not part of the installed package. Nothing here imports numpy or torch at
import time, so ``benchmarks.__main__`` can pin the BLAS thread counts first.
"""
