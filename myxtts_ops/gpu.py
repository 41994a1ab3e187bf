"""Framework-neutral convenience layer over the CUDA entry points of
:mod:`myxtts_ops.kernels`.

The pybind11 functions ``kernels.cuda_forward`` / ``kernels.cuda_backward``
take caller-allocated device arrays (anything exposing
``__cuda_array_interface__``). This module allocates those outputs and the
workspace with the same framework as the inputs (CuPy or PyTorch), on the same
device and stream, and calls the kernels::

    import cupy as cp
    from myxtts_ops import gpu
    out = gpu.forward(y_true, y_pred, lengths)           # CuPy arrays in, CuPy out
    g_true, g_pred = gpu.backward(y_true, y_pred, lengths, out.sample_weights)

    import torch
    out = gpu.forward(t_true, t_pred, t_len, stream=torch.cuda.Stream())

Neither TensorFlow, CuPy nor PyTorch is imported until a function is called
with arrays of that framework. bfloat16: PyTorch ``torch.bfloat16`` tensors
are handled directly; CuPy has no bfloat16 dtype, so pass the raw 16-bit
patterns as a uint16/int16 array together with ``dtype="bfloat16"`` (gradients
come back as uint16 bit patterns too).

Streams: ``stream=None`` uses the framework's current stream; otherwise a
``cupy.cuda.Stream``, a ``torch.cuda.Stream`` or a raw ``cudaStream_t``
integer. Outputs and the workspace are allocated while that stream is current,
so the framework's caching allocator orders their reuse after the launch.
Nothing synchronises: results are ready when the stream reaches them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from myxtts_ops.array_backend import ArrayBackend, backend_for

__all__ = [
    "ForwardResult",
    "ForwardResultCounts",
    "available",
    "backward",
    "forward",
    "workspace_size",
]

_DTYPES = ("float16", "bfloat16", "float32", "float64")


class ForwardResult(NamedTuple):
    loss: Any  # [] float32 (float64 for float64 inputs)
    per_sample: Any  # [B], loss dtype
    nonfinite_count: Any  # [] int64
    state: Any  # [STATE_SIZE] float64
    sample_weights: Any  # [2, B] float64: row 0 = c_b, row 1 = 1/n_b


class ForwardResultCounts(NamedTuple):
    """:func:`forward` with ``return_counts=True`` (the TF op's
    ``MaskedMelLossCounts`` fields, plus what the backward needs)."""

    loss: Any
    per_sample: Any
    nonfinite_count: Any
    state: Any
    sample_weights: Any
    active_count: Any  # [] int64: samples with at least one counted element
    valid_count: Any  # [] int64: elements before the lengths, finite or not


def _kernels():
    try:
        from . import kernels  # noqa: WPS433 (lazy on purpose)
    except ImportError as e:  # pragma: no cover - depends on the build
        raise ImportError(
            "myxtts_ops.gpu needs the compiled pybind11 module myxtts_ops.kernels "
            "(myxtts_ops/kernels*.so); build it with CMake "
            "(e.g. scripts/gpu_check.sh) or install the wheel. Original error: " + str(e)
        ) from e
    return kernels


def unavailable_reason() -> str | None:
    """Why the CUDA kernels cannot run here, or None when they can."""
    try:
        k = _kernels()
    except ImportError as e:
        return f"myxtts_ops.kernels is not built ({e})"
    if not k.built_with_cuda():
        return "myxtts_ops.kernels was built without CUDA"
    if int(k.cuda_device_count()) <= 0:
        return "no CUDA device visible"
    return None


def available() -> bool:
    """True when the kernels module is built with CUDA and sees a device."""
    return unavailable_reason() is None


def workspace_size(batch: int, frames: int, mels: int) -> int:
    """Bytes of device workspace the forward kernel needs (the same for every dtype)."""
    return int(_kernels().cuda_workspace_size(int(batch), int(frames), int(mels)))


def _resolve_dtype(be: ArrayBackend, y_true, y_pred, dtype: str | None) -> str:
    t_name, p_name = be.dtype_name(y_true), be.dtype_name(y_pred)
    if t_name != p_name:
        raise ValueError(f"y_true and y_pred must have the same dtype, got {t_name} and {p_name}")
    if dtype is None:
        dtype = t_name
    if dtype not in _DTYPES:
        raise ValueError(
            f"unsupported dtype {dtype!r}: expected one of {_DTYPES} "
            "(bfloat16 CuPy data: pass uint16 bit patterns with dtype='bfloat16')"
        )
    if dtype == "bfloat16" and t_name not in ("bfloat16", "uint16", "int16"):
        raise ValueError(f"dtype='bfloat16' needs bfloat16 or 16-bit integer storage, got {t_name}")
    if dtype != "bfloat16" and t_name != dtype:
        raise ValueError(f"dtype={dtype!r} does not match the arrays' dtype {t_name}")
    return dtype


def _prepare(be: ArrayBackend, y_true, y_pred, lengths, dtype):
    if tuple(y_true.shape) != tuple(y_pred.shape) or len(y_true.shape) != 3:
        raise ValueError(
            f"y_true and y_pred must both be [batch, frames, mels], got shapes "
            f"{tuple(y_true.shape)} and {tuple(y_pred.shape)}"
        )
    dtype = _resolve_dtype(be, y_true, y_pred, dtype)
    y_true, y_pred = be.contiguous(y_true), be.contiguous(y_pred)
    batch = int(y_true.shape[0])
    if lengths is not None:
        if not be.owns(lengths):
            lengths = be.asarray(lengths, like=y_true)
        if be.dtype_name(lengths) not in ("int32", "int64"):
            raise ValueError(f"lengths must be int32 or int64, got {be.dtype_name(lengths)}")
        if tuple(lengths.shape) != (batch,):
            raise ValueError(f"lengths must have shape [{batch}], got {tuple(lengths.shape)}")
        lengths = be.contiguous(lengths)
    return y_true, y_pred, lengths, dtype


def forward(
    y_true,
    y_pred,
    lengths=None,
    state=None,
    *,
    loss_type: str = "l1",
    huber_delta: float = 1.0,
    normalization: str = "per_sample",
    stream=None,
    dtype: str | None = None,
    workspace=None,
    check_lengths: bool = True,
    return_counts: bool = False,
) -> ForwardResult | ForwardResultCounts:
    """Fused masked mel loss forward on the GPU (one kernel launch).

    ``lengths``: None (every frame valid), or int32/int64 [B] (device array, or
    host data that is copied to the device). ``state``: float64 [STATE_SIZE]
    device array, or None for fresh statistics. ``workspace``: optional uint8
    device buffer of at least :func:`workspace_size` bytes to reuse (it must
    not be used concurrently by another launch). ``check_lengths=False``
    skips the kernels module's small synchronous read-back of device lengths
    (out-of-range lengths then give a NaN loss instead of an error), which
    keeps the call free of host synchronisation (CUDA-graph capturable).
    ``return_counts=True`` also returns ``active_count`` and ``valid_count``
    (:class:`ForwardResultCounts`), written by the same launch.
    """
    be = backend_for(y_true)
    y_true, y_pred, lengths, dtype = _prepare(be, y_true, y_pred, lengths, dtype)
    k = _kernels()
    batch, frames, mels = (int(s) for s in y_true.shape)
    out_dtype = "float64" if dtype == "float64" else "float32"
    ws_bytes = int(k.cuda_workspace_size(batch, frames, mels))
    with be.stream_context(stream, y_true):
        if state is None:
            state = be.zeros((int(k.STATE_SIZE),), "float64", y_true)
        elif not be.owns(state):
            state = be.asarray(state, like=y_true)
        if be.dtype_name(state) != "float64" or tuple(state.shape) != (int(k.STATE_SIZE),):
            raise ValueError(
                f"state must be float64 [{int(k.STATE_SIZE)}], got "
                f"{be.dtype_name(state)} {tuple(state.shape)}"
            )
        state = be.contiguous(state)
        if workspace is None:
            workspace = be.empty((max(ws_bytes, 1),), "uint8", y_true)
        elif be.nbytes(workspace) < ws_bytes:
            raise ValueError(
                f"workspace too small: need {ws_bytes} bytes, got {be.nbytes(workspace)}"
            )
        loss = be.empty((), out_dtype, y_true)
        per_sample = be.empty((batch,), out_dtype, y_true)
        nonfinite = be.empty((), "int64", y_true)
        new_state = be.empty((int(k.STATE_SIZE),), "float64", y_true)
        weights = be.empty((2, batch), "float64", y_true)
        counts = [be.empty((), "int64", y_true) for _ in range(2)] if return_counts else [None] * 2
        t_k, bf = be.kernel_view(y_true)
        p_k, _ = be.kernel_view(y_pred)
        k.cuda_forward(
            t_k,
            p_k,
            lengths,
            state,
            loss,
            per_sample,
            nonfinite,
            new_state,
            weights,
            workspace,
            loss_type=loss_type,
            huber_delta=float(huber_delta),
            normalization=normalization,
            stream=be.stream_ptr(stream, y_true),
            dtype=bf or (dtype if dtype == "bfloat16" else None),
            check_lengths=check_lengths,
            active_count=counts[0],
            valid_count=counts[1],
        )
    if return_counts:
        return ForwardResultCounts(loss, per_sample, nonfinite, new_state, weights, *counts)
    return ForwardResult(loss, per_sample, nonfinite, new_state, weights)


def backward(
    y_true,
    y_pred,
    lengths,
    sample_weights,
    grad_loss=None,
    grad_per_sample=None,
    *,
    loss_type: str = "l1",
    huber_delta: float = 1.0,
    stream=None,
    dtype: str | None = None,
    check_lengths: bool = True,
):
    """Fused backward (one launch): returns ``(grad_y_true, grad_y_pred)``.

    ``sample_weights`` is ``forward(...).sample_weights``. ``grad_loss``
    (scalar) defaults to 1 and ``grad_per_sample`` ([B]) to zeros; both may
    be device arrays in the loss dtype or host numbers/arrays.
    """
    be = backend_for(y_true)
    y_true, y_pred, lengths, dtype = _prepare(be, y_true, y_pred, lengths, dtype)
    k = _kernels()
    batch = int(y_true.shape[0])
    out_dtype = "float64" if dtype == "float64" else "float32"
    with be.stream_context(stream, y_true):
        if grad_loss is None:
            grad_loss = be.full((), 1.0, out_dtype, y_true)
        elif not be.owns(grad_loss):
            import numpy as np

            grad_loss = be.asarray(np.asarray(grad_loss, dtype=out_dtype).reshape(()), like=y_true)
        if grad_per_sample is None:
            grad_per_sample = be.zeros((batch,), out_dtype, y_true)
        elif not be.owns(grad_per_sample):
            import numpy as np

            grad_per_sample = be.asarray(
                np.asarray(grad_per_sample, dtype=out_dtype).reshape((batch,)), like=y_true
            )
        for name, arr, shape in (
            ("grad_loss", grad_loss, ()),
            ("grad_per_sample", grad_per_sample, (batch,)),
        ):
            if be.dtype_name(arr) != out_dtype or tuple(arr.shape) != shape:
                raise ValueError(
                    f"{name} must be {out_dtype} {list(shape)}, got "
                    f"{be.dtype_name(arr)} {list(arr.shape)}"
                )
        if not be.owns(sample_weights):
            sample_weights = be.asarray(sample_weights, like=y_true)
        if be.dtype_name(sample_weights) != "float64" or tuple(sample_weights.shape) != (2, batch):
            raise ValueError(f"sample_weights must be float64 [2, {batch}]")
        grad_loss, grad_per_sample = be.contiguous(grad_loss), be.contiguous(grad_per_sample)
        sample_weights = be.contiguous(sample_weights)
        storage = be.dtype_name(y_true)
        g_true = be.empty(tuple(y_true.shape), storage, y_true)
        g_pred = be.empty(tuple(y_true.shape), storage, y_true)
        t_k, bf = be.kernel_view(y_true)
        p_k, _ = be.kernel_view(y_pred)
        gt_k, _ = be.kernel_view(g_true)
        gp_k, _ = be.kernel_view(g_pred)
        k.cuda_backward(
            t_k,
            p_k,
            lengths,
            sample_weights,
            grad_loss,
            grad_per_sample,
            gt_k,
            gp_k,
            loss_type=loss_type,
            huber_delta=float(huber_delta),
            stream=be.stream_ptr(stream, y_true),
            dtype=bf or (dtype if dtype == "bfloat16" else None),
            check_lengths=check_lengths,
        )
    return g_true, g_pred
