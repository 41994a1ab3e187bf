"""Re-export of :mod:`myxtts_loss.keras_model`."""

from myxtts_loss.keras_model import XTTSModel, XTTSModelMixin, __all__  # noqa: F401
