"""Re-export of :mod:`myxtts_loss.config` (kept for ``from myxtts.config import XTTSLossConfig``)."""

from myxtts_loss.config import *  # noqa: F401,F403
from myxtts_loss.config import __all__  # noqa: F401
