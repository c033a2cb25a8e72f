import sys

from analysis.subspace.cli import main

sys.exit(main())
