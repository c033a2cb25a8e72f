"""``python -m benchmarks [--threads N] [...]``: see ``benchmarks/run.py`` and ``--help``.

By default nothing is pinned: every contender runs in the environment users run it in (the toolkit sets
its own BLAS threads). ``--threads N`` pins BLAS / OpenMP / torch to N threads for everything (the tables
then say so).
"""

import os
import sys


def _pin_threads(argv):
    """With ``--threads N``: set the BLAS / OpenMP thread counts before numpy or torch is imported."""
    n = None
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    if n is None:
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = n


if __name__ == "__main__":  # not when a Dask worker process (spawned) re-imports this module
    _pin_threads(sys.argv[1:])

    from benchmarks.run import main

    sys.exit(main())
