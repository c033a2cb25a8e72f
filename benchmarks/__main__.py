"""``python -m benchmarks [--threads N] [...]``: see ``benchmarks/run.py`` and ``--help``."""

import os
import sys


def _pin_threads(argv):
    """Set the BLAS / OpenMP thread counts before numpy or torch is imported."""
    n = "1"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = n


_pin_threads(sys.argv[1:])

from benchmarks.run import main  # noqa: E402

sys.exit(main())
