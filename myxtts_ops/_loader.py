"""Lazy loading of the compiled TensorFlow op library, with actionable errors.

Nothing here runs at ``import myxtts_ops``: the library is loaded on the first
call of an op (or of :func:`load_ops`), so importing the package stays cheap
and works on machines without TensorFlow (``myxtts_ops.kernels`` needs none).
"""

import os
import threading

_LIBRARY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib", "_mel_loss_op.so")
_lock = threading.Lock()
_library = None


class OpLibraryError(ImportError):
    """The op library is missing or cannot be loaded into this TensorFlow."""


def build_info():
    """What the installed library was built against, or None if unknown."""
    try:
        from myxtts_ops._lib import _build_info
    except ImportError:
        return None
    return _build_info


def _major_minor(version):
    return ".".join(str(version).split(".")[:2])


def _load():
    try:
        import tensorflow as tf
    except ImportError as err:
        raise OpLibraryError(
            "myxtts-ops needs TensorFlow 2.21: install it with "
            "`pip install 'myxtts-ops[cpu]'` (CPU) or `pip install 'myxtts-ops[gpu]'` (CUDA). "
            f"Import failed with: {err}"
        ) from err

    info = build_info()
    if not os.path.exists(_LIBRARY_FILE):
        raise OpLibraryError(
            f"The myxtts-ops op library is missing ({_LIBRARY_FILE}): this copy of the "
            "package was not built. Reinstall the wheel (`pip install --force-reinstall "
            "myxtts-ops`) or build in place from a source checkout with "
            "`python setup.py build_ext --inplace`."
        )
    built_for = getattr(info, "TF_VERSION", "") if info else ""
    if built_for and _major_minor(built_for) != _major_minor(tf.__version__):
        raise OpLibraryError(
            f"myxtts-ops was built against TensorFlow {built_for} but TensorFlow "
            f"{tf.__version__} is installed; custom ops only load into the TensorFlow "
            "minor version they were compiled for. Install TensorFlow "
            f"{_major_minor(built_for)} (`pip install 'tensorflow-cpu=={_major_minor(built_for)}.*'`), "
            "or rebuild myxtts-ops against the installed one "
            "(`pip install --no-build-isolation --force-reinstall --no-binary myxtts-ops myxtts-ops`)."
        )
    try:
        return tf.load_op_library(_LIBRARY_FILE)
    except (tf.errors.NotFoundError, OSError) as err:
        abi = getattr(info, "CXX11_ABI", "?") if info else "?"
        raise OpLibraryError(
            f"Loading {_LIBRARY_FILE} failed: {err}\n"
            f"It was built against TensorFlow {built_for or 'unknown'} (CXX11 ABI {abi}); "
            f"TensorFlow {tf.__version__} is installed. Rebuild myxtts-ops against the "
            "installed TensorFlow (`pip install --no-build-isolation --force-reinstall "
            "--no-binary myxtts-ops myxtts-ops`) or install the TensorFlow it was built for."
        ) from err


def load_ops():
    """Load and register the op library (idempotent, thread-safe).

    Returns the loaded op module. The public ``myxtts_ops.load_ops`` is
    :func:`myxtts_ops.ops.load_ops`, which also registers the gradient.
    """
    global _library
    if _library is None:
        with _lock:
            if _library is None:
                _library = _load()
    return _library
