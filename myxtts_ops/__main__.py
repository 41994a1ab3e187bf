"""``python -m myxtts_ops profile|demo``: the same as the ``myxtts-ops`` command.

Part of the tools layer (it starts the CLI), not of the op layer.
"""

import sys

from myxtts_ops.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
