"""``python -m bench``: the same as ``python bench/run.py`` (see that module)."""

import sys

from bench.run import main

sys.exit(main())
