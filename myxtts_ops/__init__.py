"""myxtts-ops: a fused TensorFlow op for the masked mel-spectrogram loss.

Public API::

    out = myxtts_ops.masked_mel_loss(y_true, y_pred, lengths, state)
    myxtts_ops.read_state(out.state)

TensorFlow is imported on first use, not at ``import myxtts_ops``, so the
TensorFlow-free parts (``myxtts_ops.kernels``, ``myxtts_ops.state``) work on
machines without it.
"""

import importlib

__version__ = "0.1.0"

__all__ = [
    "STATE_SIZE",
    "MaskedMelLossCounts",
    "MaskedMelLossOutput",
    "OpLibraryError",
    "XlaUnsupportedError",
    "kernels",
    "load_ops",
    "masked_mel_loss",
    "read_state",
    "reference",
    "saved_model",
]

_LAZY = {
    # Lazy too: an unbuilt checkout still imports the package (its CLI can say
    # what to build) and raises the state layout's message on first use.
    "STATE_SIZE": ("myxtts_ops.state", "STATE_SIZE"),
    "read_state": ("myxtts_ops.state", "read_state"),
    "masked_mel_loss": ("myxtts_ops.ops", "masked_mel_loss"),
    "XlaUnsupportedError": ("myxtts_ops.ops", "XlaUnsupportedError"),
    "MaskedMelLossOutput": ("myxtts_ops.types", "MaskedMelLossOutput"),
    "MaskedMelLossCounts": ("myxtts_ops.types", "MaskedMelLossCounts"),
    "load_ops": ("myxtts_ops.ops", "load_ops"),
    "OpLibraryError": ("myxtts_ops._loader", "OpLibraryError"),
    "reference": ("myxtts_ops.reference", None),
    "kernels": ("myxtts_ops.kernels", None),
    "saved_model": ("myxtts_ops.saved_model", None),
}

#: Modules that work without TensorFlow.
_WITHOUT_TENSORFLOW = (
    "myxtts_ops._loader",
    "myxtts_ops.kernels",
    "myxtts_ops.state",
    "myxtts_ops.types",
)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'myxtts_ops' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    if module_name not in _WITHOUT_TENSORFLOW:
        from myxtts_ops import _loader

        _loader.require_tensorflow()  # its absence explained, not a bare ImportError
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
