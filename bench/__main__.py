"""``python -m bench``: run the benchmark suite (see bench/suite.py)."""

import sys

from .suite import main

sys.exit(main())
