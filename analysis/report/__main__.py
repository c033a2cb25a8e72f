import sys

from analysis.cli.report import main

sys.exit(main())
