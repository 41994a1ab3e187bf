"""Independent float64 NumPy oracle of SPEC 3.2-3.4 (forward, backward, state).

Written from the specification, not from the TF reference or the kernels:
explicit per-sample loops and float64 arithmetic everywhere except the one
place the spec pins a precision: ``d = y_pred - y_true`` is formed in float32
for float16/bfloat16/float32 inputs (both widenings are exact, so this is one
IEEE float32 subtraction) and in float64 for float64 inputs.

Inputs are NumPy arrays (bfloat16 as ``ml_dtypes.bfloat16``). Outputs are
float64 arrays / Python numbers, except ``state`` which follows SPEC 3.4 with
the loss rounded to the op's output dtype (float32 for non-float64 inputs),
exactly as the op feeds its own returned loss into the statistics.
"""

import math

import numpy as np

# State layout restated from docs/ARCHITECTURE.md on purpose (independent).
_N_FIELDS = 19
_WINDOW = 10
_RING0 = 9


def _is_f64(x):
    return np.asarray(x).dtype == np.float64


def _diff(y_true, y_pred):
    """d in the precision the spec prescribes, returned as float64."""
    if _is_f64(y_true):
        return np.asarray(y_pred, np.float64) - np.asarray(y_true, np.float64)
    t = np.asarray(y_true).astype(np.float32)
    p = np.asarray(y_pred).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        return (p - t).astype(np.float64)


def _finite(y_true, y_pred):
    t = np.asarray(y_true).astype(np.float64)
    p = np.asarray(y_pred).astype(np.float64)
    return np.isfinite(t) & np.isfinite(p)


def _lengths(lengths, batch, frames):
    if lengths is None:
        return [frames] * batch
    return [int(v) for v in np.asarray(lengths).reshape(-1)]


def _delta_in_acc(y, delta):
    # The kernels convert delta to the accumulation type once.
    return float(delta) if _is_f64(y) else float(np.float32(delta))


def _sample_stats(y_true, y_pred, lengths, loss_type, huber_delta):
    """Per sample: (S_b, n_b, nonfinite_b) plus the list of (b, t, m, d) valid finite."""
    batch, frames, mels = np.asarray(y_true).shape
    lens = _lengths(lengths, batch, frames)
    d_all = _diff(y_true, y_pred)
    ok_all = _finite(y_true, y_pred)
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
            e = np.where(a <= delta, 0.5 * dv * dv, delta * (a - 0.5 * delta))
        sums.append(math.fsum(e.tolist()))
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


def next_state(state, loss, nonfinite_count, valid_count):
    """SPEC 3.4 state update, written independently of the kernels' loop."""
    s = np.zeros(_N_FIELDS) if state is None else np.array(state, dtype=np.float64, copy=True)
    s[0] += 1.0
    if nonfinite_count > 0:
        s[2] += 1.0
        return s
    if valid_count == 0:
        return s
    s[1] += 1.0
    k = s[1]
    decay = min(k / 1000.0, 0.99)
    s[3] = decay * s[3] + (1.0 - decay) * loss
    s[7] = loss
    head = int(s[8])
    if not 0 <= head < _WINDOW:
        head = 0
    s[_RING0 + head] = loss
    s[8] = float((head + 1) % _WINDOW)
    s[4] = float(min(int(s[4]) + 1, _WINDOW))
    window = s[_RING0:_RING0 + int(s[4])]
    s[5] = math.fsum(window) / len(window)
    s[6] = (math.fsum((x - s[5]) ** 2 for x in window) / len(window)) if len(window) >= 2 else 0.0
    return s


def forward(y_true, y_pred, lengths=None, state=None, loss_type="l1", huber_delta=1.0,
            normalization="per_sample"):
    """Forward pass. Returns dict(loss, per_sample, nonfinite_count, state, sample_weights)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    sums, counts, bad, lens = _sample_stats(y_true, y_pred, lengths, loss_type, huber_delta)
    batch, frames, mels = y_true.shape
    per_sample = np.array([s / c if c > 0 else 0.0 for s, c in zip(sums, counts)], np.float64)
    active = [b for b in range(batch) if counts[b] > 0]
    if normalization == "per_sample":
        loss = math.fsum(per_sample[active].tolist()) / len(active) if active else 0.0
    else:
        loss = math.fsum(sums) / sum(counts) if sum(counts) > 0 else 0.0
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


def backward(y_true, y_pred, lengths=None, loss_type="l1", huber_delta=1.0,
             normalization="per_sample", grad_loss=1.0, grad_per_sample=None):
    """SPEC 3.3 analytic gradients (float64): returns (grad_y_true, grad_y_pred)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    batch, frames, mels = y_true.shape
    _, counts, _, lens = _sample_stats(y_true, y_pred, lengths, loss_type, huber_delta)
    w = _weights(counts, normalization)
    g_b = np.zeros(batch) if grad_per_sample is None else np.asarray(grad_per_sample, np.float64)
    d_all = _diff(y_true, y_pred)
    ok_all = _finite(y_true, y_pred)
    delta = _delta_in_acc(y_true, huber_delta)
    gp = np.zeros((batch, frames, mels), np.float64)
    for b in range(batch):
        coef = float(grad_loss) * w[0, b] + g_b[b] * w[1, b]
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
