"""Re-export of :mod:`myxtts_loss.callbacks`."""

from myxtts_loss.callbacks import *  # noqa: F401,F403
from myxtts_loss.callbacks import __all__  # noqa: F401
