"""Independent float64 NumPy oracle of SPEC 3.2-3.4 (forward, backward, state).

Written from the specification, not from the TF reference or the kernels:
explicit per-sample loops and float64 arithmetic everywhere except the one
place the spec pins a precision: ``d = y_pred - y_true`` is formed in float32
for float16/bfloat16/float32 inputs (both widenings are exact, so this is one
IEEE float32 subtraction) and in float64 for float64 inputs.

Which valid elements count: those whose element loss is finite in the
accumulation type (float32, or float64 for float64 inputs); a NaN/Inf input
and a difference whose loss overflows are excluded and counted alike. The
element loss is evaluated in that type only to decide this; the values are
float64.

Inputs are NumPy arrays (bfloat16 as ``ml_dtypes.bfloat16``). Outputs are
float64 arrays / Python numbers, except ``state`` which follows SPEC 3.4 with
the loss rounded to the op's output dtype (float32 for non-float64 inputs),
exactly as the op feeds its own returned loss into the statistics.

The state layout (indices) is read from the build's generated copy of the
kernels' header (``myxtts_ops.state``), so it cannot drift; the update and the
rule for a corrupted incoming state are written here independently.
"""

import math
from typing import NamedTuple

import numpy as np

from myxtts_ops import state as _layout

_N_FIELDS = _layout.STATE_SIZE
_WINDOW = _layout.WINDOW_SIZE
_RING0 = _layout.RING_START
_STEPS, _CLEAN, _NONFINITE = _layout.STEPS, _layout.CLEAN_STEPS, _layout.NONFINITE_STEPS
_MEAN, _COUNT, _WMEAN = _layout.RUNNING_MEAN, _layout.WINDOW_COUNT, _layout.WINDOW_MEAN
_WVAR, _LAST, _HEAD = _layout.WINDOW_VARIANCE, _layout.LAST_LOSS, _layout.RING_HEAD


def _is_f64(x):
    return np.asarray(x).dtype.name == "float64"  # either byte order


def _diff(y_true, y_pred):
    """d in the precision the spec prescribes, returned as float64."""
    if _is_f64(y_true):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.asarray(y_pred, np.float64) - np.asarray(y_true, np.float64)
    t = np.asarray(y_true).astype(np.float32)
    p = np.asarray(y_pred).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        return (p - t).astype(np.float64)


def _counts(y_true, y_pred, loss_type, huber_delta):
    """Elements whose loss is finite in the accumulation type (SPEC 3.2)."""
    acc = np.float64 if _is_f64(y_true) else np.float32
    t = np.asarray(y_true).astype(acc)
    p = np.asarray(y_pred).astype(acc)
    with np.errstate(invalid="ignore", over="ignore"):
        d = p - t
        ad = np.abs(d)
        if loss_type == "l1":
            e = ad
        else:
            delta = acc(huber_delta)
            half = acc(0.5)
            e = np.where(ad <= delta, half * d * d, delta * (ad - half * delta))
    return np.isfinite(e)


def _lengths(lengths, batch, frames):
    if lengths is None:
        return [frames] * batch
    return [int(v) for v in np.asarray(lengths).reshape(-1)]


def _delta_in_acc(y, delta):
    # The kernels convert delta to the accumulation type once.
    return float(delta) if _is_f64(y) else float(np.float32(delta))


def _exact_sum(values):
    """The correctly rounded sum; +-inf when it lies past float64's range
    (math.fsum raises there instead of rounding to inf)."""
    values = list(values)
    try:
        return math.fsum(values)
    except OverflowError:
        with np.errstate(over="ignore"):
            return float(np.sum(values, dtype=np.float64))


def _sample_stats(y_true, y_pred, lengths, loss_type, huber_delta):
    """Per sample: (S_b, n_b, nonfinite_b) plus the list of (b, t, m, d) valid finite."""
    batch, frames, mels = np.asarray(y_true).shape
    lens = _lengths(lengths, batch, frames)
    d_all = _diff(y_true, y_pred)
    ok_all = _counts(y_true, y_pred, loss_type, huber_delta)
    delta = _delta_in_acc(y_true, huber_delta)
    sums, counts, bad = [], [], []
    for b in range(batch):
        n = lens[b]
        d = d_all[b, :n].reshape(-1)
        ok = ok_all[b, :n].reshape(-1)
        dv = d[ok]
        a = np.abs(dv)
        if loss_type == "l1":
            e = a
        else:
            with np.errstate(over="ignore"):
                e = np.where(a <= delta, 0.5 * dv * dv, delta * (a - 0.5 * delta))
        sums.append(_exact_sum(e.tolist()))
        counts.append(int(ok.sum()))
        bad.append(n * mels - counts[-1])
    return sums, counts, bad, lens


def _weights(counts, normalization):
    active = sum(1 for c in counts if c > 0)
    total = sum(counts)
    w_loss, w_sample = [], []
    for c in counts:
        if c == 0:
            w_loss.append(0.0)
            w_sample.append(0.0)
        else:
            w_sample.append(1.0 / c)
            w_loss.append(1.0 / (active * c) if normalization == "per_sample" else 1.0 / total)
    return np.array([w_loss, w_sample], dtype=np.float64).reshape(2, len(counts))


def _is_count(x):
    return bool(0.0 <= x <= 2.0**53) and float(x).is_integer()


def sanitized(state):
    """The rule for a corrupted incoming state (see csrc/kernels/mel_loss_math.h)."""
    s = np.array(state, dtype=np.float64, copy=True)
    for i in (_STEPS, _CLEAN, _NONFINITE):
        if not _is_count(s[i]):
            s[i] = 0.0
    if not math.isfinite(s[_MEAN]):
        s[_MEAN] = 0.0
        s[_CLEAN] = 0.0
    if not math.isfinite(s[_LAST]):
        s[_LAST] = 0.0
    count, head = s[_COUNT], s[_HEAD]
    ok = (
        _is_count(count)
        and count <= _WINDOW
        and _is_count(head)
        and head < _WINDOW
        and (count == _WINDOW or head == count)
    )
    if not all(math.isfinite(v) for v in s[_RING0 : _RING0 + _WINDOW]):
        ok = False
    if not math.isfinite(s[_WMEAN]) or math.isnan(s[_WVAR]):
        ok = False
    if not ok:
        s[_HEAD] = s[_COUNT] = s[_WMEAN] = s[_WVAR] = 0.0
        s[_RING0 : _RING0 + _WINDOW] = 0.0
    return s


def next_state(state, loss, nonfinite_count, valid_count):
    """SPEC 3.4 state update, written independently of the kernels' loop.

    A step with a non-finite element or a non-finite loss is a non-finite step.
    """
    s = np.zeros(_N_FIELDS) if state is None else sanitized(state)
    s[_STEPS] += 1.0
    if nonfinite_count > 0 or not math.isfinite(loss):
        s[_NONFINITE] += 1.0
        return s
    if valid_count == 0:
        return s
    s[_CLEAN] += 1.0
    k = s[_CLEAN]
    decay = min(k / _layout.DECAY_RAMP, _layout.MAX_DECAY)
    s[_MEAN] = decay * s[_MEAN] + (1.0 - decay) * loss
    s[_LAST] = loss
    head = int(s[_HEAD])
    s[_RING0 + head] = loss
    s[_HEAD] = float((head + 1) % _WINDOW)
    s[_COUNT] = float(min(int(s[_COUNT]) + 1, _WINDOW))
    window = s[_RING0 : _RING0 + int(s[_COUNT])]
    s[_WMEAN] = math.fsum(window) / len(window)
    # Huge finite losses: the squares overflow to inf, as they do in the kernels.
    with np.errstate(over="ignore"):
        s[_WVAR] = (
            math.fsum((x - s[_WMEAN]) ** 2 for x in window) / len(window)
            if len(window) >= 2
            else 0.0
        )
    return s


def forward(
    y_true,
    y_pred,
    lengths=None,
    state=None,
    loss_type="l1",
    huber_delta=1.0,
    normalization="per_sample",
):
    """Forward pass. Returns dict(loss, per_sample, nonfinite_count, state, sample_weights)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    sums, counts, bad, lens = _sample_stats(y_true, y_pred, lengths, loss_type, huber_delta)
    batch, frames, mels = y_true.shape
    per_sample = np.array([s / c if c > 0 else 0.0 for s, c in zip(sums, counts)], np.float64)
    active = [b for b in range(batch) if counts[b] > 0]
    if normalization == "per_sample":
        loss = _exact_sum(per_sample[active].tolist()) / len(active) if active else 0.0
    else:
        loss = _exact_sum(sums) / sum(counts) if sum(counts) > 0 else 0.0
    nonfinite = int(sum(bad))
    valid = int(sum(lens)) * mels
    loss_out = loss if _is_f64(y_true) else float(np.float32(loss))
    return dict(
        loss=loss,
        per_sample=per_sample,
        nonfinite_count=nonfinite,
        state=next_state(state, loss_out, nonfinite, valid),
        sample_weights=_weights(counts, normalization),
    )


def _coefficients(
    y_true, y_pred, lengths, loss_type, huber_delta, normalization, grad_loss, grad_per_sample
):
    """Per sample: the gradient coefficient grad_loss * w0_b + g_b * w1_b, the
    magnitudes of its two terms, and the lengths."""
    _, counts, _, lens = _sample_stats(y_true, y_pred, lengths, loss_type, huber_delta)
    w = _weights(counts, normalization)
    g_b = np.zeros(len(counts)) if grad_per_sample is None else np.asarray(grad_per_sample)
    loss_term, sample_term = float(grad_loss) * w[0], g_b.astype(np.float64) * w[1]
    return loss_term + sample_term, np.abs(loss_term) + np.abs(sample_term), lens


def coefficient_terms(
    y_true,
    y_pred,
    lengths=None,
    loss_type="l1",
    huber_delta=1.0,
    normalization="per_sample",
    grad_loss=1.0,
    grad_per_sample=None,
):
    """[B]: |grad_loss * w0_b| + |g_b * w1_b|, the two terms of each sample's
    gradient coefficient before they are added. They can cancel, so a kernel
    that adds them in float32 is off by a few float32 roundings of these
    magnitudes, which may be far above the (small) coefficient itself."""
    args = (lengths, loss_type, huber_delta, normalization, grad_loss, grad_per_sample)
    return _coefficients(np.asarray(y_true), np.asarray(y_pred), *args)[1]


def backward(
    y_true,
    y_pred,
    lengths=None,
    loss_type="l1",
    huber_delta=1.0,
    normalization="per_sample",
    grad_loss=1.0,
    grad_per_sample=None,
):
    """SPEC 3.3 analytic gradients (float64): returns (grad_y_true, grad_y_pred)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    batch, frames, mels = y_true.shape
    args = (lengths, loss_type, huber_delta, normalization, grad_loss, grad_per_sample)
    coefs, _, lens = _coefficients(y_true, y_pred, *args)
    d_all = _diff(y_true, y_pred)
    ok_all = _counts(y_true, y_pred, loss_type, huber_delta)
    delta = _delta_in_acc(y_true, huber_delta)
    gp = np.zeros((batch, frames, mels), np.float64)
    for b in range(batch):
        coef = coefs[b]
        n = lens[b]
        d = d_all[b, :n]
        ok = ok_all[b, :n]
        sign = np.sign(np.where(ok, d, 0.0))
        if loss_type == "l1":
            g = sign
        else:
            g = np.where(np.abs(d) <= delta, d, delta * sign)
        gp[b, :n] = np.where(ok, coef * g, 0.0)
    return -gp, gp


# ---------------------------------------------------------------------------
# The stop-token loss (MyXTTS contract 3.2, probabilities), float32 inputs.
class StopOutputs(NamedTuple):
    sums: np.ndarray  # float64 [B]
    counts: np.ndarray  # int64 [B]
    nonfinite: int
    grad_target: np.ndarray  # float64 [B, T]: d sum_b grad_sums[b] sums[b] / d target
    grad_pred: np.ndarray


def stop_bce(target, pred, lengths, grad_sums, positive_weight, label_smoothing, prob_min):
    """Per-sample sums of the weighted BCE over the counted positions (t < L,
    target and prediction finite) and their gradients, in float64. The clip
    bounds are the float32 values the kernels compare with (1 - 1e-7 is
    1 - 2**-23 in float32); a prediction outside them has no gradient."""
    t = np.asarray(target, np.float64)
    p = np.asarray(pred, np.float64)
    frames = t.shape[1]
    lo = float(np.float32(prob_min))
    hi = float(np.float32(1.0) - np.float32(prob_min))
    valid = np.arange(frames)[None, :] < np.asarray(lengths)[:, None]
    ok = valid & np.isfinite(t) & np.isfinite(p)
    ts = np.where(ok, t, 0.0)
    ps = np.where(ok, p, 0.5)
    pc = np.clip(ps, lo, hi)
    y = ts * (1.0 - label_smoothing) + 0.5 * label_smoothing
    log_p, log_q = np.log(pc), np.log(1.0 - pc)
    elem = -(positive_weight * y * log_p + (1.0 - y) * log_q)
    g = np.asarray(grad_sums, np.float64)[:, None]
    d_pred = (1.0 - y) / (1.0 - pc) - positive_weight * y / pc
    d_true = -(1.0 - label_smoothing) * (positive_weight * log_p - log_q)
    inside = (ps >= lo) & (ps <= hi)
    return StopOutputs(
        np.where(ok, elem, 0.0).sum(axis=1),
        ok.sum(axis=1),
        int((valid & ~ok).sum()),
        np.where(ok, g * d_true, 0.0),
        np.where(ok & inside, g * d_pred, 0.0),
    )
