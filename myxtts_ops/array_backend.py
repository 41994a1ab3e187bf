"""One adapter over the CUDA array libraries (CuPy, PyTorch) for the kernels module.

:mod:`myxtts_ops.gpu`, the GPU test suite (``tests/gpu``), the
compute-sanitizer driver (``scripts/sanitize_driver.py``) and the GPU
benchmark (``benchmarks/gpu_bench.py``) all allocate device arrays, move
data, and pass streams to :mod:`myxtts_ops.kernels` through this module.

Dtypes are named as NumPy names them, plus ``"bfloat16"``: CuPy has no
bfloat16, so bfloat16 data lives in ``uint16`` arrays (raw bit patterns);
PyTorch has ``torch.bfloat16`` but no usable ``uint16``, so ``"uint16"`` bit
patterns live in ``int16`` tensors. :meth:`ArrayBackend.to_host` returns
bfloat16 data as ``uint16`` bit patterns for both.

Streams: ``None`` means the library's current stream; otherwise a
``cupy.cuda.Stream``, a ``torch.cuda.Stream`` or a raw ``cudaStream_t``
integer. Neither CuPy nor PyTorch is imported until a backend is made.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

BACKENDS = ("cupy", "torch")


class BackendUnavailable(RuntimeError):
    """No requested array library can run here; the message says why for each."""


class ArrayBackend:
    """Device arrays, copies, streams and events with one array library."""

    name = "?"
    module: Any = None

    def unavailable_reason(self) -> str | None:
        """Why this library cannot run kernels here (no device), or None."""
        raise NotImplementedError

    def owns(self, x) -> bool:
        raise NotImplementedError

    def kernel_view(self, x) -> tuple[Any, str | None]:
        """(object to hand to the kernels, dtype override for them or None)."""
        return x, None


class CuPyBackend(ArrayBackend):
    name = "cupy"

    def __init__(self):
        import cupy

        self.module = self.cp = cupy

    def unavailable_reason(self):
        if self.cp.cuda.runtime.getDeviceCount() <= 0:
            return "CuPy sees no CUDA device"
        return None

    @staticmethod
    def storage(dtype: str) -> str:
        return "uint16" if dtype == "bfloat16" else dtype

    def _device(self, like):
        return self.cp.cuda.Device(like.device.id) if like is not None else contextlib.nullcontext()

    def owns(self, x) -> bool:
        return isinstance(x, self.cp.ndarray)

    def dtype_name(self, x) -> str:
        return x.dtype.name

    def nbytes(self, x) -> int:
        return int(x.nbytes)

    def empty(self, shape, dtype: str, like=None):
        with self._device(like):
            return self.cp.empty(shape, dtype=self.storage(dtype))

    def zeros(self, shape, dtype: str, like=None):
        with self._device(like):
            return self.cp.zeros(shape, dtype=self.storage(dtype))

    def full(self, shape, value, dtype: str, like=None):
        with self._device(like):
            return self.cp.full(shape, value, dtype=self.storage(dtype))

    def asarray(self, host, dtype: str | None = None, like=None):
        host = np.asarray(host)
        if dtype is not None and dtype != "bfloat16":
            host = host.astype(dtype, copy=False)
        with self._device(like):
            return self.cp.asarray(host)

    def to_host(self, x, dtype: str | None = None) -> np.ndarray:
        return _host_as(self.cp.asnumpy(x), dtype)

    def contiguous(self, x):
        return x if x.flags.c_contiguous else self.cp.ascontiguousarray(x)

    def reinterpret(self, x, dtype: str, shape: Sequence[int]):
        return x.view(self.storage(dtype)).reshape(tuple(shape))

    def fill_bytes(self, x, byte: int) -> None:
        x.fill(byte)

    def copy(self, dst, src, stream=None) -> None:
        with self.stream_context(stream, dst):
            dst[...] = src

    def copy_from_host(self, dst, host, stream=None) -> None:
        host = np.asarray(host, dtype=dst.dtype)
        if stream is None:
            dst.set(host)  # synchronous
            return
        with self.stream_context(stream, dst):
            dst.set(host, stream=self.cp.cuda.get_current_stream())

    def new_stream(self):
        return self.cp.cuda.Stream(non_blocking=True)

    def stream_ptr(self, stream=None, like=None) -> int:
        if stream is None:
            with self._device(like):
                return int(self.cp.cuda.get_current_stream().ptr)
        if isinstance(stream, int):
            return stream
        return int(stream.ptr)

    @contextlib.contextmanager
    def stream_context(self, stream=None, like=None):
        with self._device(like):
            if stream is None:
                yield
                return
            if isinstance(stream, int):
                device_id = like.device.id if like is not None else self.cp.cuda.Device().id
                stream = (
                    self.cp.cuda.ExternalStream(stream, device_id)
                    if stream
                    else self.cp.cuda.Stream.null
                )
            with stream:
                yield

    def synchronize(self, stream=None) -> None:
        (stream if stream is not None else self.cp.cuda.Device()).synchronize()

    def event(self):
        return self.cp.cuda.Event()

    def elapsed_ms(self, start, end) -> float:
        return float(self.cp.cuda.get_elapsed_time(start, end))

    def device_name(self) -> str:
        props = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)
        return props["name"].decode()

    def exact_allocations(self) -> None:
        """Every array its own cudaMalloc (memory pools off), for compute-sanitizer."""
        self.cp.cuda.set_allocator(None)
        self.cp.cuda.set_pinned_memory_allocator(None)


class TorchBackend(ArrayBackend):
    name = "torch"

    def __init__(self):
        import torch

        self.module = self.torch = torch
        self._dtypes = {
            "float16": torch.float16,
            "bfloat16": torch.bfloat16,
            "float32": torch.float32,
            "float64": torch.float64,
            "int16": torch.int16,
            "uint16": torch.int16,  # bit patterns (no usable torch.uint16)
            "int32": torch.int32,
            "int64": torch.int64,
            "uint8": torch.uint8,
        }

    def unavailable_reason(self):
        if not self.torch.cuda.is_available():
            return "PyTorch has no CUDA device"
        return None

    def storage(self, dtype: str):
        try:
            return self._dtypes[dtype]
        except KeyError:
            raise ValueError(f"no PyTorch storage for dtype {dtype!r}") from None

    def _device(self, like):
        if like is not None:
            return like.device
        return self.torch.device("cuda", self.torch.cuda.current_device())

    def owns(self, x) -> bool:
        return isinstance(x, self.torch.Tensor)

    def dtype_name(self, x) -> str:
        return str(x.dtype).replace("torch.", "")

    def nbytes(self, x) -> int:
        return int(x.numel() * x.element_size())

    def empty(self, shape, dtype: str, like=None):
        return self.torch.empty(shape, dtype=self.storage(dtype), device=self._device(like))

    def zeros(self, shape, dtype: str, like=None):
        return self.torch.zeros(shape, dtype=self.storage(dtype), device=self._device(like))

    def full(self, shape, value, dtype: str, like=None):
        return self.torch.full(shape, value, dtype=self.storage(dtype), device=self._device(like))

    def _from_numpy(self, host: np.ndarray):
        host = np.array(host, order="C")  # a writable C-ordered copy (0-d stays 0-d)
        if host.dtype == np.uint16:
            host = host.view(np.int16)
        return self.torch.from_numpy(host)

    def asarray(self, host, dtype: str | None = None, like=None):
        host = np.asarray(host)
        if dtype is not None and dtype != "bfloat16":
            host = host.astype(dtype, copy=False)
        out = self._from_numpy(host).to(self._device(like))
        if dtype == "bfloat16":  # uint16 bit patterns -> torch.bfloat16
            out = out.view(self.torch.bfloat16)
        return out

    def to_host(self, x, dtype: str | None = None) -> np.ndarray:
        x = x.detach()
        if x.dtype == self.torch.bfloat16:
            return x.view(self.torch.int16).cpu().numpy().view(np.uint16)
        return _host_as(x.cpu().numpy(), dtype)

    def contiguous(self, x):
        return x.contiguous()

    def reinterpret(self, x, dtype: str, shape: Sequence[int]):
        return x.view(self.storage(dtype)).view(tuple(shape))

    def fill_bytes(self, x, byte: int) -> None:
        x.fill_(byte)

    def copy(self, dst, src, stream=None) -> None:
        with self.stream_context(stream, dst):
            dst.copy_(src, non_blocking=True)

    def copy_from_host(self, dst, host, stream=None) -> None:
        src = self._from_numpy(np.asarray(host))
        if stream is None:
            dst.copy_(src)
            return
        with self.stream_context(stream, dst):
            dst.copy_(src.pin_memory(), non_blocking=True)

    def new_stream(self):
        return self.torch.cuda.Stream(device=self._device(None))

    def stream_ptr(self, stream=None, like=None) -> int:
        if stream is None:
            return int(self.torch.cuda.current_stream(self._device(like)).cuda_stream)
        if isinstance(stream, int):
            return stream
        return int(stream.cuda_stream)

    @contextlib.contextmanager
    def stream_context(self, stream=None, like=None):
        device = self._device(like)
        with self.torch.cuda.device(device):
            if stream is None:
                yield
                return
            if isinstance(stream, int):
                stream = self.torch.cuda.ExternalStream(stream, device=device)
            with self.torch.cuda.stream(stream):
                yield

    def synchronize(self, stream=None) -> None:
        if stream is not None:
            stream.synchronize()
        else:
            self.torch.cuda.synchronize(self._device(None))

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def elapsed_ms(self, start, end) -> float:
        return float(start.elapsed_time(end))

    def device_name(self) -> str:
        return self.torch.cuda.get_device_name()

    def exact_allocations(self) -> None:
        """Every tensor its own cudaMalloc: needs the caching allocator off from the start."""
        if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") != "1":
            raise RuntimeError(
                "exact-size allocations with PyTorch need PYTORCH_NO_CUDA_MEMORY_CACHING=1 "
                "in the environment before torch initialises CUDA"
            )

    def kernel_view(self, x):
        if x is not None and x.dtype == self.torch.bfloat16:
            return x.view(self.torch.int16), "bfloat16"
        return x, None


def _host_as(array: np.ndarray, dtype: str | None) -> np.ndarray:
    """``array`` in ``dtype``: bit patterns reinterpreted between 16-bit integer
    types, other dtypes converted."""
    if dtype is None or array.dtype == np.dtype(dtype):
        return array
    if array.dtype.kind in "iu" and array.dtype.itemsize == np.dtype(dtype).itemsize:
        return array.view(dtype)
    return array.astype(dtype, copy=False)


_CLASSES = {"cupy": CuPyBackend, "torch": TorchBackend}
_CACHE: dict[str, ArrayBackend] = {}


def _check_names(names: Sequence[str]) -> None:
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown array backend {name!r}; choose from {', '.join(BACKENDS)}")


def load_backend(name: str | None = None, prefer: Sequence[str] = BACKENDS) -> ArrayBackend:
    """The first usable backend: ``name`` alone when given, else the first of
    ``prefer`` that imports and sees a CUDA device.

    Raises ``ValueError`` for a name that is not a backend and
    :class:`BackendUnavailable` (with every library's reason) when none works.
    """
    names = [name] if name else list(prefer)
    _check_names(names)
    reasons = []
    for candidate in names:
        try:
            backend = _CACHE.get(candidate) or _CLASSES[candidate]()
            reason = backend.unavailable_reason()
        except Exception as exc:  # noqa: BLE001 - ImportError, CUDA driver errors
            reasons.append(f"{candidate} unavailable ({type(exc).__name__}: {exc})")
            continue
        _CACHE[candidate] = backend
        if reason is None:
            return backend
        reasons.append(reason)
    raise BackendUnavailable("; ".join(reasons))


def backend_for(x) -> ArrayBackend:
    """The backend of a CuPy array or a PyTorch CUDA tensor."""
    module = type(x).__module__.split(".")[0]
    if module not in BACKENDS:
        raise TypeError(
            "expected a CuPy array or a PyTorch CUDA tensor, got "
            f"{type(x).__module__}.{type(x).__name__}; for NumPy arrays use "
            "myxtts_ops.kernels.forward/backward"
        )
    if module not in _CACHE:
        _CACHE[module] = _CLASSES[module]()
    backend = _CACHE[module]
    if module == "torch" and not x.is_cuda:
        raise ValueError(f"PyTorch tensors must be on a CUDA device, got one on {x.device}")
    return backend
