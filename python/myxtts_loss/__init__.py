"""myxtts_loss: MyXTTS's whole training loss on the myxtts-ops fused mel op.

A drop-in for ``myxtts.training.losses`` under a module name that a MyXTTS
checkout's own ``myxtts`` package cannot shadow::

    from myxtts_loss import XTTSLoss, create_stop_targets, mel_loss, stop_token_loss

This package never imports a ``myxtts`` package. Modules:

* :mod:`myxtts_loss.loss` -- :class:`XTTSLoss` (wiring: statistics, reduction, state writes);
* :mod:`myxtts_loss.terms` -- the loss terms (registry + module-level functions);
* :mod:`myxtts_loss.rule` -- the adaptive-weight rule and the smoothing, as pure functions;
* :mod:`myxtts_loss.finalise` -- every term's value, the decision's observations and the total;
* :mod:`myxtts_loss.state` -- the state variables and the checkpoint settings record;
* :mod:`myxtts_loss.gradient_norm` -- the gradient-norm tracker and its ``model.fit`` feed;
* :mod:`myxtts_loss.metrics` -- the reported snapshots;
* :mod:`myxtts_loss.config` -- :class:`XTTSLossConfig`, every setting, validated;
* :mod:`myxtts_loss.keras_model`, :mod:`myxtts_loss.callbacks` -- Keras glue.

Imports are lazy: ``import myxtts_loss`` does not import TensorFlow.
"""

import importlib
import importlib.util
import pkgutil

__version__ = "0.1.0"

_LAZY = {
    "XTTSLoss": "myxtts_loss.loss",
    "ConcurrentCallError": "myxtts_loss.loss",
    "XTTSLossConfig": "myxtts_loss.config",
    "XTTSModel": "myxtts_loss.keras_model",
    "XTTSModelMixin": "myxtts_loss.keras_model",
    "feed_gradient_norm": "myxtts_loss.gradient_norm",
    "XTTSLossMonitor": "myxtts_loss.callbacks",
    "XTTSLossValidation": "myxtts_loss.callbacks",
    "XTTSLossBackup": "myxtts_loss.callbacks",
    "write_loss_summaries": "myxtts_loss.callbacks",
}
_TERM_FUNCTIONS = (
    "mel_loss",
    "stop_token_loss",
    "attention_loss",
    "duration_loss",
    "pitch_loss",
    "energy_loss",
    "diffusion_loss",
    "speaking_rate_loss",
    "create_stop_targets",
    "compute_mel_statistics",
    "ContrastiveSpeakerLoss",
)
_LAZY.update({name: "myxtts_loss.terms" for name in _TERM_FUNCTIONS})

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        # A submodule as an attribute (myxtts_loss.callbacks.XTTSLossMonitor
        # after a plain import myxtts_loss), imported on first use like the names.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'myxtts_loss' has no attribute {name!r}")


def __dir__():
    submodules = {m.name for m in pkgutil.iter_modules(__path__)}
    return sorted(set(globals()) | set(__all__) | submodules)
