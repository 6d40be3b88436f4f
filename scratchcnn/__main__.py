"""``python -m scratchcnn``: the same command line as ``scratchcnn``."""

import sys

from .cli import main

sys.exit(main())
