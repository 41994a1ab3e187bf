"""Fixtures of the CUDA kernel suite (tests/gpu).

Needs no TensorFlow. Everything is skipped, with the reason, unless all of
these hold: the pybind11 module ``myxtts_ops.kernels`` is built (in-tree
``myxtts_ops/kernels*.so`` or installed) with CUDA, it sees a device, and
CuPy or PyTorch (with CUDA) is importable. ``MYXTTS_GPU_BACKEND=cupy|torch``
forces one array library.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

# JAX (the FFI tests) otherwise takes most of the GPU memory the array
# libraries of the other tests need.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = Path(__file__).resolve().parents[2]
# The source tree only when the package is not installed (an installed wheel
# must not be shadowed by an unbuilt checkout).
if importlib.util.find_spec("myxtts_ops") is None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _import_package_without_init():
    """Make ``myxtts_ops`` importable even if its __init__ needs TensorFlow.

    The kernels module and ``myxtts_ops.gpu`` need nothing from the package
    __init__; when importing it fails (no TF on the GPU box), a bare package
    object pointing at the source folder takes its place.
    """
    try:
        importlib.import_module("myxtts_ops")
        return None
    except ImportError as e:
        pkg = types.ModuleType("myxtts_ops")
        pkg.__path__ = [str(ROOT / "myxtts_ops")]
        pkg.__file__ = str(ROOT / "myxtts_ops" / "__init__.py")
        sys.modules["myxtts_ops"] = pkg
        return f"myxtts_ops/__init__ not importable ({e}); using a bare package"


_PKG_NOTE = _import_package_without_init()


def load_kernels():
    """(module, None) or (None, reason)."""
    try:
        k = importlib.import_module("myxtts_ops.kernels")
    except ImportError as e:
        return None, (
            f"myxtts_ops.kernels is not built ({e}); build it with "
            "scripts/gpu_check.sh or cmake -DMYXTTS_OPS_CUDA=ON"
        )
    if not k.built_with_cuda():
        return None, "myxtts_ops.kernels was built without CUDA"
    try:
        n = int(k.cuda_device_count())
    except Exception as e:  # noqa: BLE001
        return None, f"cuda_device_count() failed: {e}"
    if n <= 0:
        return None, "no CUDA device visible"
    return k, None


# ---------------------------------------------------------------------------
class DevBuf:
    """A C-contiguous device array carved out of a raw byte buffer at an element
    offset (so its start address is deliberately unaligned), with the bytes
    around it available for poisoning. ``lib`` is a
    :class:`myxtts_ops.array_backend.ArrayBackend`."""

    def __init__(self, lib, shape, dtype: str, offset: int = 0, fill: int = 0xFF):
        self.lib = lib
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        n = int(np.prod(self.shape)) if self.shape else 1
        item = self.dtype.itemsize
        self.nbytes = n * item
        self.raw_all = lib.full((max((n + offset + 4) * item, 1),), fill, "uint8")
        self.raw = self.raw_all[offset * item : offset * item + self.nbytes]
        self.arr = lib.reinterpret(self.raw, self.dtype.name, self.shape)

    def poison(self, byte: int = 0xFF):
        self.lib.fill_bytes(self.raw_all, byte)

    def host(self) -> np.ndarray:
        return self.lib.to_host(self.arr, self.dtype.name)

    def upload(self, host: np.ndarray, stream=None):
        host = np.array(host, dtype=self.dtype, order="C")
        assert host.shape == self.shape, (host.shape, self.shape)
        self.lib.copy_from_host(self.arr, host, stream)


def load_lib():
    """(array backend, None) or (None, reason). ``MYXTTS_GPU_BACKEND`` picks one."""
    from myxtts_ops.array_backend import BackendUnavailable, load_backend

    wanted = os.environ.get("MYXTTS_GPU_BACKEND", "").strip().lower() or None
    try:
        return load_backend(wanted), None
    except (BackendUnavailable, ValueError) as e:
        return None, str(e)


# ---------------------------------------------------------------------------
# CUPTI-free launch counting: capture the calls on a stream into a CUDA graph
# (driver API through ctypes) and count its kernel and memset nodes.
_CU_GRAPH_NODE_TYPE_KERNEL = 0
_CU_GRAPH_NODE_TYPE_MEMCPY = 1
_CU_GRAPH_NODE_TYPE_MEMSET = 2
_CU_STREAM_CAPTURE_MODE_RELAXED = 2


def _libcuda():
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise OSError("libcuda not found")


def capture_node_counts(fn, stream_ptr: int) -> dict:
    """Run ``fn()`` (which must enqueue on ``stream_ptr``) under stream capture
    and return {"kernel": n, "memset": n, "memcpy": n, "other": n}. Nothing is
    executed: the captured graph is destroyed."""
    cu = _libcuda()
    begin = getattr(cu, "cuStreamBeginCapture_v2", None) or cu.cuStreamBeginCapture
    begin.argtypes = [ctypes.c_void_p, ctypes.c_int]
    cu.cuStreamEndCapture.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    cu.cuGraphGetNodes.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
    ]
    cu.cuGraphNodeGetType.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    cu.cuGraphDestroy.argtypes = [ctypes.c_void_p]
    rc = begin(ctypes.c_void_p(stream_ptr), _CU_STREAM_CAPTURE_MODE_RELAXED)
    if rc != 0:
        raise RuntimeError(f"cuStreamBeginCapture failed ({rc})")
    error = None
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - end the capture first
        error = e
    graph = ctypes.c_void_p()
    rc = cu.cuStreamEndCapture(ctypes.c_void_p(stream_ptr), ctypes.byref(graph))
    if error is not None:
        if graph.value:
            cu.cuGraphDestroy(graph)
        raise RuntimeError(f"call failed under stream capture: {error}") from error
    if rc != 0:
        raise RuntimeError(
            f"cuStreamEndCapture failed ({rc}): the call did something "
            "that cannot be captured (host synchronisation?)"
        )
    try:
        n = ctypes.c_size_t(0)
        assert cu.cuGraphGetNodes(graph, None, ctypes.byref(n)) == 0
        nodes = (ctypes.c_void_p * max(n.value, 1))()
        assert cu.cuGraphGetNodes(graph, nodes, ctypes.byref(n)) == 0
        counts = {"kernel": 0, "memset": 0, "memcpy": 0, "other": 0}
        for i in range(n.value):
            t = ctypes.c_int(-1)
            assert cu.cuGraphNodeGetType(ctypes.c_void_p(nodes[i]), ctypes.byref(t)) == 0
            key = {
                _CU_GRAPH_NODE_TYPE_KERNEL: "kernel",
                _CU_GRAPH_NODE_TYPE_MEMSET: "memset",
                _CU_GRAPH_NODE_TYPE_MEMCPY: "memcpy",
            }.get(t.value, "other")
            counts[key] += 1
        return counts
    finally:
        cu.cuGraphDestroy(graph)


# ---------------------------------------------------------------------------
_KERNELS, _KERNELS_WHY = load_kernels()
_LIB, _LIB_WHY = (None, None)
if _KERNELS is not None:
    _LIB, _LIB_WHY = load_lib()


def pytest_report_header(config):
    if _KERNELS is None:
        return f"myxtts GPU suite: skipped ({_KERNELS_WHY})"
    if _LIB is None:
        return f"myxtts GPU suite: skipped ({_LIB_WHY})"
    note = f"; {_PKG_NOTE}" if _PKG_NOTE else ""
    return f"myxtts GPU suite: kernels={_KERNELS.__file__} backend={_LIB.name}{note}"


@pytest.fixture(scope="session")
def kernels():
    if _KERNELS is None:
        pytest.skip(_KERNELS_WHY)
    return _KERNELS


@pytest.fixture(scope="session")
def lib(kernels):
    if _LIB is None:
        pytest.skip(f"no CUDA array library: {_LIB_WHY}")
    return _LIB
