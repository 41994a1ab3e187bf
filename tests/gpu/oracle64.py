"""Independent float64 NumPy reference of SPEC 3.2-3.4 for the GPU test suite.

Written from the specification only (it shares no code with the kernels or
with other reference implementations). Inputs are NumPy arrays; bfloat16 data
is given as its raw 16-bit patterns (uint16/int16) with ``dtype="bfloat16"``.

Precision model (SPEC 3.2): ``d = y_pred - y_true`` is formed in float32 for
float16/bfloat16/float32 inputs (exactly as the kernels do: both operands are
widened exactly, one IEEE subtraction), in float64 for float64 inputs. Every
later step (element loss, sums, means, weights, gradients) is float64 here, so
the kernels' float32 accumulation is checked against it with a tolerance.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

# State layout: the build's copy generated from the kernels' header (one
# source); the update and the corrupted-state rule below are written here.
from myxtts_ops.state import (  # noqa: E402
    CLEAN_STEPS,
    DECAY_RAMP,
    LAST_LOSS,
    MAX_DECAY,
    NONFINITE_STEPS,
    RING_HEAD,
    RING_START,
    RUNNING_MEAN,
    STATE_SIZE,
    STEPS,
    WINDOW_COUNT,
    WINDOW_MEAN,
    WINDOW_SIZE,
    WINDOW_VARIANCE,
)

DTYPES = ("float16", "bfloat16", "float32", "float64")


# ---------------------------------------------------------------------------
# bfloat16 <-> float32 by bit manipulation (no ml_dtypes needed).
def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    u = np.asarray(bits).view(np.uint16).astype(np.uint32) << np.uint32(16)
    return u.view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (NaN stays NaN)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    nan = np.isnan(x)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def to_float(x: np.ndarray, dtype: str) -> np.ndarray:
    """Widen storage values exactly: float32 for 16/32-bit types, float64 else."""
    if dtype == "bfloat16":
        return bf16_bits_to_f32(x)
    if dtype == "float64":
        return np.asarray(x, dtype=np.float64)
    return np.asarray(x).astype(np.float32)


def from_float(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round float values to the storage dtype (bfloat16 as uint16 bits)."""
    if dtype == "bfloat16":
        return f32_to_bf16_bits(np.asarray(x, dtype=np.float32))
    return np.asarray(x).astype(np.dtype(dtype))


def storage_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def out_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.float64) if dtype == "float64" else np.dtype(np.float32)


# ---------------------------------------------------------------------------
def _valid_mask(batch: int, frames: int, lengths) -> np.ndarray:
    if lengths is None:
        return np.ones([batch, frames], dtype=bool)
    lengths = np.asarray(lengths).astype(np.int64)
    assert lengths.shape == (batch,)
    assert np.all(lengths >= 0) and np.all(lengths <= frames)
    return np.arange(frames)[None, :] < lengths[:, None]


def _diff(y_true, y_pred, dtype, loss_type="l1", huber_delta=1.0):
    """d, and which elements count: those whose loss is finite in the
    accumulation type (a NaN/Inf input or an overflowing loss does not)."""
    t = to_float(y_true, dtype)
    p = to_float(y_pred, dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        d = p - t  # float32 (or float64) IEEE subtraction, like the kernels
        ad = np.abs(d)
        if loss_type == "huber":
            delta = d.dtype.type(huber_delta)
            half = d.dtype.type(0.5)
            e = np.where(ad <= delta, half * d * d, delta * (ad - half * delta))
        else:
            e = ad
    return d, np.isfinite(e)


def _elem(d: np.ndarray, loss_type: str, delta: float) -> np.ndarray:
    d = d.astype(np.float64)
    ad = np.abs(d)
    if loss_type == "l1":
        return ad
    if loss_type == "huber":
        return np.where(ad <= delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
    raise ValueError(loss_type)


def _elem_grad(d: np.ndarray, loss_type: str, delta: float) -> np.ndarray:
    d = d.astype(np.float64)
    sign = np.sign(d)
    if loss_type == "l1":
        return sign
    if loss_type == "huber":
        return np.where(np.abs(d) <= delta, d, delta * sign)
    raise ValueError(loss_type)


def _effective_delta(delta: float, dtype: str) -> float:
    # The kernels compare |d| with delta in the accumulation type.
    return float(np.float64(delta)) if dtype == "float64" else float(np.float32(delta))


class Forward(NamedTuple):
    loss: float  # float64 value (not rounded)
    per_sample: np.ndarray  # float64 [B]
    nonfinite_count: int
    counts: np.ndarray  # int64 [B] (n_b)
    sums: np.ndarray  # float64 [B] (S_b)
    valid_count: int  # number of valid elements
    sample_weights: np.ndarray  # float64 [2, B]: c_b, 1/n_b
    state: np.ndarray  # float64 [STATE_SIZE] from the loss rounded to out dtype


def forward(
    y_true,
    y_pred,
    lengths=None,
    state=None,
    *,
    dtype: str | None = None,
    loss_type="l1",
    huber_delta=1.0,
    normalization="per_sample",
) -> Forward:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    dtype = dtype or y_true.dtype.name
    assert y_true.shape == y_pred.shape and y_true.ndim == 3
    B, T, M = y_true.shape
    delta = _effective_delta(huber_delta, dtype)
    valid = np.broadcast_to(_valid_mask(B, T, lengths)[:, :, None], (B, T, M))
    d, finite = _diff(y_true, y_pred, dtype, loss_type, huber_delta)
    use = valid & finite
    with np.errstate(invalid="ignore", over="ignore"):
        elem = np.where(use, _elem(np.where(use, d, 0), loss_type, delta), 0.0)
    sums = elem.reshape(B, T * M).sum(axis=1)
    counts = use.reshape(B, T * M).sum(axis=1).astype(np.int64)
    nonfinite = int((valid & ~finite).sum())
    valid_count = int(valid.sum())
    per_sample = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    active = int((counts > 0).sum())
    total = int(counts.sum())
    if normalization == "per_sample":
        loss = float(per_sample[counts > 0].sum() / active) if active else 0.0
    elif normalization == "global":
        loss = float(sums.sum() / total) if total else 0.0
    else:
        raise ValueError(normalization)
    weights = np.zeros([2, B], dtype=np.float64)
    for b in range(B):
        n = int(counts[b])
        if n <= 0:
            continue
        weights[1, b] = 1.0 / float(n)
        weights[0, b] = (
            1.0 / (float(active) * float(n))
            if normalization == "per_sample"
            else 1.0 / float(total)
        )
    rounded = float(np.asarray(loss).astype(out_dtype(dtype)))
    new_state = update_state(state, rounded, nonfinite, valid_count)
    return Forward(loss, per_sample, nonfinite, counts, sums, valid_count, weights, new_state)


def _is_count(x) -> bool:
    return bool(0.0 <= x <= 2.0**53) and float(x).is_integer()


def sanitize_state(s: np.ndarray) -> np.ndarray:
    """The corrupted-state rule of mel_loss_math.h, restated."""
    s = s.copy()
    for i in (STEPS, CLEAN_STEPS, NONFINITE_STEPS):
        if not _is_count(s[i]):
            s[i] = 0.0
    if not math.isfinite(s[RUNNING_MEAN]):
        s[RUNNING_MEAN] = s[CLEAN_STEPS] = 0.0
    if not math.isfinite(s[LAST_LOSS]):
        s[LAST_LOSS] = 0.0
    count, head = s[WINDOW_COUNT], s[RING_HEAD]
    ok = (
        _is_count(count)
        and count <= WINDOW_SIZE
        and _is_count(head)
        and head < WINDOW_SIZE
        and (count == WINDOW_SIZE or head == count)
        and bool(np.all(np.isfinite(s[RING_START : RING_START + WINDOW_SIZE])))
        and math.isfinite(s[WINDOW_MEAN])
        and not math.isnan(s[WINDOW_VARIANCE])
    )
    if not ok:
        s[RING_HEAD] = s[WINDOW_COUNT] = s[WINDOW_MEAN] = s[WINDOW_VARIANCE] = 0.0
        s[RING_START : RING_START + WINDOW_SIZE] = 0.0
    return s


def update_state(state, loss: float, nonfinite_count: int, valid_count: int) -> np.ndarray:
    """SPEC 3.4, scalar Python arithmetic in float64."""
    s = np.zeros([STATE_SIZE]) if state is None else np.array(state, dtype=np.float64, copy=True)
    assert s.shape == (STATE_SIZE,)
    s = sanitize_state(s)
    s[STEPS] += 1.0
    if nonfinite_count > 0 or not math.isfinite(loss):
        s[NONFINITE_STEPS] += 1.0
        return s
    if valid_count <= 0:
        return s
    k = s[CLEAN_STEPS] + 1.0
    s[CLEAN_STEPS] = k
    decay = min(k / DECAY_RAMP, MAX_DECAY)
    s[RUNNING_MEAN] = decay * s[RUNNING_MEAN] + (1.0 - decay) * loss
    s[LAST_LOSS] = loss
    head = int(s[RING_HEAD])
    s[RING_START + head] = loss
    s[RING_HEAD] = float((head + 1) % WINDOW_SIZE)
    filled = min(s[WINDOW_COUNT] + 1.0, float(WINDOW_SIZE))
    s[WINDOW_COUNT] = filled
    window = [float(v) for v in s[RING_START : RING_START + int(filled)]]
    mean = math.fsum(window) / len(window)
    var = math.fsum((v - mean) ** 2 for v in window) / len(window) if len(window) >= 2 else 0.0
    s[WINDOW_MEAN] = mean
    s[WINDOW_VARIANCE] = var
    return s


def backward(
    y_true,
    y_pred,
    lengths,
    sample_weights,
    grad_loss,
    grad_per_sample,
    *,
    dtype: str | None = None,
    loss_type="l1",
    huber_delta=1.0,
):
    """Float64 gradients (grad_y_true, grad_y_pred), not rounded to the input dtype."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    dtype = dtype or y_true.dtype.name
    B, T, M = y_true.shape
    delta = _effective_delta(huber_delta, dtype)
    valid = np.broadcast_to(_valid_mask(B, T, lengths)[:, :, None], (B, T, M))
    d, finite = _diff(y_true, y_pred, dtype, loss_type, huber_delta)
    use = valid & finite
    w = np.asarray(sample_weights, dtype=np.float64).reshape(2, B)
    g = float(np.asarray(grad_loss, dtype=np.float64))
    gb = np.asarray(grad_per_sample, dtype=np.float64).reshape(B)
    coef = g * w[0] + gb * w[1]  # [B]
    with np.errstate(invalid="ignore", over="ignore"):
        gp = np.where(
            use, coef[:, None, None] * _elem_grad(np.where(use, d, 0), loss_type, delta), 0.0
        )
    return -gp, gp


def valid_finite_mask(y_true, y_pred, lengths, dtype: str | None = None) -> np.ndarray:
    """Boolean [B, T, M]: elements that count (valid frame, both values finite)."""
    y_true = np.asarray(y_true)
    dtype = dtype or y_true.dtype.name
    B, T, M = y_true.shape
    valid = np.broadcast_to(_valid_mask(B, T, lengths)[:, :, None], (B, T, M))
    _, finite = _diff(y_true, y_pred, dtype)
    return valid & finite


def valid_mask(shape, lengths) -> np.ndarray:
    """Boolean [B, T, M]: elements in valid frames."""
    B, T, M = shape
    return np.broadcast_to(_valid_mask(B, T, lengths)[:, :, None], (B, T, M))
