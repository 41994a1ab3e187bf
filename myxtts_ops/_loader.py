"""Lazy loading of the compiled TensorFlow op library, with actionable errors.

Nothing here runs at ``import myxtts_ops``: the library is loaded on the first
call of an op (or of :func:`load_ops`), so importing the package stays cheap
and works on machines without TensorFlow (``myxtts_ops.kernels`` needs none).
"""

import ctypes
import os
import sys
import threading

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_FILE = os.path.join(_PACKAGE_DIR, "_lib", "_mel_loss_op.so")
_REBUILD = (
    "`pip install --force-reinstall --no-deps --no-binary myxtts-ops myxtts-ops`, or "
    "`pip install --force-reinstall --no-deps .` in a source checkout"
)
_lock = threading.Lock()
_library = None
_xla_reason = None  # "" once the XLA path is known to work


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


def built_copies_elsewhere(package_dir=_PACKAGE_DIR, search_path=None):
    """Other copies of the package on the import path that have the op library
    (e.g. the installed one, when a source checkout shadows it)."""
    found = []
    for entry in sys.path if search_path is None else search_path:
        candidate = os.path.join(os.path.abspath(entry or os.curdir), "myxtts_ops")
        if os.path.realpath(candidate) == os.path.realpath(package_dir):
            continue
        if os.path.exists(os.path.join(candidate, "_lib", "_mel_loss_op.so")):
            found.append(candidate)
    return list(dict.fromkeys(found))


def missing_library_message(library_file, elsewhere, what="op library"):
    """Why a built file (the op library, the generated state layout) is missing
    here and what to do about it."""
    if elsewhere:
        return (
            f"The myxtts-ops {what} is missing ({library_file}): Python imported "
            f"myxtts_ops from the unbuilt source tree {os.path.dirname(os.path.dirname(library_file))}, "
            f"which shadows the built copy at {elsewhere[0]}. Run from another directory "
            "(the current directory comes first on sys.path), or build the source tree in place "
            "with `python setup.py build_ext --inplace` (or `pip install --no-build-isolation -e .`)."
        )
    return (
        f"The myxtts-ops {what} is missing ({library_file}): this copy of the "
        "package was not built. Reinstall it (`pip install --force-reinstall myxtts-ops`, "
        "or `pip install .` from a source checkout), or build a source checkout in place "
        "with `python setup.py build_ext --inplace`."
    )


def driver_cuda_version():
    """The CUDA version the installed NVIDIA driver supports, as (major, minor),
    or None when there is no driver (a CPU-only machine)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
        return None
    return version.value // 1000, (version.value % 1000) // 10


def cuda_driver_mismatch(built_cuda_version, driver_version):
    """None when a driver supporting CUDA `driver_version` (major, minor) runs
    kernels built with toolkit `built_cuda_version` ("12.5.82"), else the error
    text. The kernels link the toolkit's static runtime, which runs on any
    driver of the same CUDA major or newer (minor version compatibility)."""
    if not built_cuda_version or driver_version is None:
        return None
    built_major = int(str(built_cuda_version).split(".")[0])
    if driver_version[0] >= built_major:
        return None
    driver = "%d.%d" % driver_version
    return (
        f"myxtts-ops's CUDA kernels were built with CUDA {built_cuda_version}, but the NVIDIA "
        f"driver supports CUDA {driver} only: they would fail to launch. Install a driver for "
        f"CUDA {built_major}, or rebuild myxtts-ops with a CUDA {driver_version[0]}.x toolkit "
        f"(`MYXTTS_OPS_CUDA_HOME=/usr/local/cuda-{driver_version[0]}.x pip install "
        "--force-reinstall --no-deps .`), or without CUDA (`MYXTTS_OPS_CUDA=off`)."
    )


def missing_tensorflow_error(err):
    """The OpLibraryError for an ``import tensorflow`` that failed with ``err``."""
    info = build_info()
    built_for = getattr(info, "TF_VERSION", "") if info else ""
    wanted = _major_minor(built_for) if built_for else "2"
    return OpLibraryError(
        f"myxtts-ops needs TensorFlow {wanted}: install it with "
        f"`pip install 'tensorflow-cpu=={wanted}.*'` (CPU) or "
        f"`pip install 'tensorflow[and-cuda]=={wanted}.*'` (CUDA). "
        f"Import failed with: {err}"
    )


def require_tensorflow():
    """``import tensorflow``, or the OpLibraryError that says what to install."""
    try:
        import tensorflow as tf
    except ImportError as err:
        raise missing_tensorflow_error(err) from err
    return tf


def _load():
    info = build_info()
    built_for = getattr(info, "TF_VERSION", "") if info else ""
    tf = require_tensorflow()

    if not os.path.exists(_LIBRARY_FILE):
        raise OpLibraryError(missing_library_message(_LIBRARY_FILE, built_copies_elsewhere()))
    if info is not None and getattr(info, "CUDA_ENABLED", False):
        mismatch = cuda_driver_mismatch(getattr(info, "CUDA_VERSION", ""), driver_cuda_version())
        if mismatch:
            raise OpLibraryError(mismatch)
    if built_for and _major_minor(built_for) != _major_minor(tf.__version__):
        raise OpLibraryError(
            f"myxtts-ops was built against TensorFlow {built_for} but TensorFlow "
            f"{tf.__version__} is installed; custom ops only load into the TensorFlow "
            "minor version they were compiled for. Install TensorFlow "
            f"{_major_minor(built_for)} (`pip install 'tensorflow-cpu=={_major_minor(built_for)}.*'`), "
            "or rebuild myxtts-ops against the installed one (the build uses the installed "
            f"TensorFlow): {_REBUILD}."
        )
    try:
        return tf.load_op_library(_LIBRARY_FILE)
    except (tf.errors.NotFoundError, OSError) as err:
        abi = getattr(info, "CXX11_ABI", "?") if info else "?"
        raise OpLibraryError(
            f"Loading {_LIBRARY_FILE} failed: {err}\n"
            f"It was built against TensorFlow {built_for or 'unknown'} (CXX11 ABI {abi}); "
            f"TensorFlow {tf.__version__} is installed. Rebuild myxtts-ops against the "
            f"installed TensorFlow ({_REBUILD}) or install the TensorFlow it was built for."
        ) from err


def xla_unavailable_reason():
    """Why the op cannot run as an XLA custom call in this process, or None if it can.

    Loads the library. The XLA kernels and FFI handlers register themselves when
    it loads, before or after the process's first XLA compilation; what is left
    to fail is a build without them or a handler registration that XLA refused.
    """
    global _xla_reason
    if _xla_reason is None:
        try:
            load_ops()
        except OpLibraryError as err:
            _xla_reason = f"the op library does not load ({err})"
            return _xla_reason
        import ctypes

        try:
            query = ctypes.CDLL(_LIBRARY_FILE).myxtts_ops_xla_unavailable_reason
        except AttributeError:
            _xla_reason = (
                "this build of myxtts-ops has no XLA custom calls (the TensorFlow it was built "
                "against lacked XLA's C++ FFI header xla/ffi/api/ffi.h, which TensorFlow ships "
                "from 2.20 on, or the tf2xla headers or libtensorflow_cc): upgrade TensorFlow "
                f"to 2.20 or newer, then reinstall myxtts-ops: {_REBUILD}"
            )
        else:
            query.restype = ctypes.c_char_p
            _xla_reason = query().decode()
    return _xla_reason or None


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
