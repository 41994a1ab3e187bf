"""``python -m myxtts_ops profile|demo``: the same as the ``myxtts-ops`` command."""

import sys

from myxtts_ops.cli import main

if __name__ == "__main__":
    sys.exit(main())
