"""The tools layer's one import of the loss side (``XTTSLoss``).

Everything in :mod:`myxtts_ops.tools` that needs the loss gets it here, so the
import path of the loss package is written once.
"""

from __future__ import annotations


class LossImportError(ImportError):
    """XTTSLoss could not be imported; the message says why."""


def xtts_loss_class():
    """The ``XTTSLoss`` class (imports the loss side, and TensorFlow, on first call)."""
    try:
        from myxtts_loss import XTTSLoss
    except Exception as exc:  # the import's own message is the actionable part
        msg = str(exc) or exc.__class__.__name__
        raise LossImportError(f"XTTSLoss failed to import: {msg}") from None
    return XTTSLoss
