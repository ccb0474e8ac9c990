"""``python -m taichi_etgs.cli``: the command line."""

import sys

from . import main

sys.exit(main())
