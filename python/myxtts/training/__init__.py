"""Training components: :class:`XTTSLoss` and its Keras integration.

* :class:`~myxtts.training.losses.XTTSLoss` -- the loss (fused mel op, stop BCE,
  stable adaptive mel weight).
* :class:`~myxtts.training.keras_model.XTTSModel` /
  :class:`~myxtts.training.keras_model.XTTSModelMixin` -- ``keras.Model`` whose
  ``compute_loss`` gives whole ``y`` / ``y_pred`` dicts to an XTTSLoss and whose
  ``compile`` feeds gradient norms to it.
* :func:`~myxtts.training.gradient_norm.feed_gradient_norm` -- make an optimizer
  report each step's gradient norm to an XTTSLoss.
* :class:`~myxtts.training.callbacks.XTTSLossMonitor`,
  :func:`~myxtts.training.callbacks.write_loss_summaries` -- logging;
  :class:`~myxtts.training.callbacks.XTTSLossValidation` -- validation that
  leaves the training state alone in a plain ``keras.Model``.
* :func:`~myxtts.training.losses.mel_loss`,
  :func:`~myxtts.training.losses.stop_token_loss` -- the module functions
  MyXTTS's own ``myxtts.training`` exports.

Imports are lazy so ``import myxtts.training`` does not import TensorFlow.
"""

import importlib

__all__ = [
    "XTTSLoss",
    "XTTSLossConfig",
    "XTTSModel",
    "XTTSModelMixin",
    "feed_gradient_norm",
    "XTTSLossMonitor",
    "XTTSLossValidation",
    "write_loss_summaries",
    "mel_loss",
    "stop_token_loss",
]

_LAZY = {
    "XTTSLoss": "myxtts.training.losses",
    "XTTSLossConfig": "myxtts.config",
    "XTTSLossBackup": "myxtts.training.callbacks",
    "XTTSModel": "myxtts.training.keras_model",
    "XTTSModelMixin": "myxtts.training.keras_model",
    "feed_gradient_norm": "myxtts.training.gradient_norm",
    "XTTSLossMonitor": "myxtts.training.callbacks",
    "XTTSLossValidation": "myxtts.training.callbacks",
    "write_loss_summaries": "myxtts.training.callbacks",
    # The module functions MyXTTS's own myxtts/training/__init__.py exports.
    "mel_loss": "myxtts.training.losses",
    "stop_token_loss": "myxtts.training.losses",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'myxtts.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
