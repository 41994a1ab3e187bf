"""Re-export of :mod:`myxtts_loss.gradient_norm`."""

from myxtts_loss.gradient_norm import *  # noqa: F401,F403
from myxtts_loss.gradient_norm import __all__  # noqa: F401
