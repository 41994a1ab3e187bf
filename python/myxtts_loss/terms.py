"""The loss terms of the MyXTTS contract as small masked functions, and their registry.

Each term computes **sufficient statistics** ``TermStats(num, den, nonfinite)``
of its batch: the value is ``num / den`` (then ``clip`` for the terms that
clip the batch value). ``num`` is differentiable; ``den`` and ``nonfinite``
are counts. Statistics of several replicas add up, so one code path serves
one device and ``tf.distribute`` (:mod:`myxtts_loss.loss` reduces them with
one all-reduce, or not at all on one replica).

Masking rules (every term):

* padding is **selected out** with ``tf.where``, never multiplied by 0, so
  NaN/Inf in padding changes nothing;
* a non-finite value in a valid position is excluded from the sums and the
  counts (the per-sample mean divides by the finite valid positions) and
  counted in ``nonfinite``; both operands go through ``tf.where`` before the
  math, so the gradient stays finite and is 0 there;
* lengths may be integers or integral floats (Keras casts every input to
  float32); a non-integral or negative length is an error
  (:func:`as_lengths`).

Per-sample reduction (``per_sample_stats``): ``l_b`` = mean of the element
losses of sample ``b`` over its valid positions (0 when it has none), the
value is ``(1/B) sum_b l_b`` (every sample counts in ``B``, as in MyXTTS).
Without lengths the value is the plain mean over all finite elements.

:data:`TERMS` is the registry (contract section 2, in its order): name, the
``y_true`` / ``y_pred`` keys it needs, the optional ones, the weight setting
and the function. Adding a term is adding one entry. The mel term's entry
names its keys and weight; its statistics come from the fused op
(:mod:`myxtts_loss.loss`).

The module-level functions (``mel_loss``, ``stop_token_loss``,
``attention_loss``, ...) have the original's signatures and return the
term's value; they are built on the same statistics functions.
"""

import collections
import dataclasses
import re

import numpy as np
import tensorflow as tf

from myxtts_ops.validation import MAX_LENGTH, float_length_flaws, integral_lengths

__all__ = [
    "TermStats",
    "Term",
    "TERMS",
    "TERM_NAMES",
    "KNOWN_TRUE_KEYS",
    "KNOWN_PRED_KEYS",
    "PARTICIPATION_PAIRS",
    "as_lengths",
    "check_inputs",
    "term_value",
    "mel_target_noise",
    "standard_normal_noise",
    "mel_loss",
    "stop_token_loss",
    "attention_loss",
    "duration_loss",
    "pitch_loss",
    "energy_loss",
    "diffusion_loss",
    "speaking_rate_loss",
    "contrastive_speaker_loss",
    "ContrastiveSpeakerLoss",
    "create_stop_targets",
    "compute_mel_statistics",
]

#: ``value = num / den``; ``nonfinite``: valid positions holding NaN/Inf.
TermStats = collections.namedtuple("TermStats", ["num", "den", "nonfinite"])

_F32 = tf.float32
PARTICIPATION_COEFFICIENT = 1e-6
#: (prediction, target) pairs regularised when the target is missing (contract 3.10).
PARTICIPATION_PAIRS = (
    ("duration_pred", "duration_target"),
    ("pitch_output", "pitch_target"),
    ("energy_output", "energy_target"),
    ("prosody_pitch", "prosody_pitch_target"),
    ("prosody_energy", "prosody_energy_target"),
    ("prosody_speaking_rate", "prosody_speaking_rate_target"),
)


# --------------------------------------------------------------------- inputs
def in_xla():
    try:
        from myxtts_ops.ops import in_xla_context
    except Exception:  # pragma: no cover - op package without ops.py
        return False
    return in_xla_context()


def fused_stop_op_used():
    """Whether :func:`stop_stats` (``fused=True``) runs the fused stop-token op
    here: outside XLA (inside, XLA fuses the TF ops itself) and where no GPU is
    visible. The op's CUDA kernels pass their GPU suite
    (``tests/gpu/test_stop_cuda.py``, through the pybind11 module), but its
    TensorFlow GPU kernel has not run inside TensorFlow on a GPU, so a training
    step that may run on a GPU keeps the TF-ops form, whose GPU kernels are
    TensorFlow's."""
    from myxtts_ops.ops import host_kernels_used

    return host_kernels_used()


def xla_length_check_available():
    from myxtts_ops.ops import xla_length_check_available

    return xla_length_check_available()


def length_check_available():
    from myxtts_ops.ops import length_check_available

    return length_check_available()


def check_lengths(lengths, name, limit, note, bounds=()):
    from myxtts_ops.ops import check_lengths

    return check_lengths(lengths, name, limit=limit, note=note, bounds=bounds)


def check_sizes(pairs):
    from myxtts_ops.ops import check_sizes

    return check_sizes(pairs)


def _op_message(message):
    """An eager op error's own text, without TensorFlow's node and op tags."""
    message = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", message)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", message, flags=re.S)


def _static_size(value, axis):
    shape = tf.TensorShape(_shape_of(value))
    if shape.rank is None or axis >= shape.rank:
        return None
    return shape[axis]


def _length_limit(bounds):
    """(static limit, its note, bounds unknown when traced) for ``as_lengths``' ``bounds``.

    The smallest statically known size is the check's limit; the sizes unknown
    when a graph is traced (``None``, as ``reduce_retracing`` makes them) are
    returned for the check to read when the graph runs (under XLA: when it
    compiles, where every size is static).
    """
    limit, note, dynamic = MAX_LENGTH, "", []
    for label, value, axis in bounds:
        size = _static_size(value, axis)
        if size is not None and size < limit:
            limit, note = size, f" (the size of {label} axis {axis})"
        elif size is None and not tf.executing_eagerly():
            dynamic.append((label, value, axis))
    return limit, note, dynamic


def as_lengths(lengths, name, bounds=(), *, invalid=0):
    """``lengths`` as an int32 ``[B]`` tensor, refusing any entry that is not a
    whole number in ``[0, MAX_LENGTH]``, or larger than an axis it indexes.

    ``bounds``: ``(label, tensor, axis)`` for each axis whose positions the
    lengths count; a length past its end would silently shrink a per-sample
    mean's divisor, so it is refused like a negative one, the message naming
    ``label`` and the axis.

    Integral floats (Keras casts lengths to float32) are accepted. One check on
    every path, :func:`myxtts_ops.ops.check_lengths`, names ``name``, the index
    and the value as passed: a ``ValueError`` eagerly, an
    ``InvalidArgumentError`` in graphs and under XLA (where it is a custom call
    that XLA keeps; it compiles ``tf.debugging`` assertions away). Only where
    this process cannot run that op (its library does not load, or under XLA
    without its custom calls) do TensorFlow ops stand in: assertions outside
    XLA; under XLA, where nothing can refuse, an invalid entry becomes
    ``invalid``: 0 for the terms' masks; with a negative ``invalid`` (lengths
    for the mel op, which refuses them) a negative whole number stays itself
    and any other becomes ``invalid``.
    """
    t = tf.convert_to_tensor(lengths)
    if t.shape.rank is not None and t.shape.rank != 1:
        # A column [B, 1] (Keras-style targets) is the same lengths; a last
        # axis unknown when traced must be 1 when run (squeeze refuses otherwise).
        if t.shape.rank == 2 and t.shape[-1] in (1, None):
            t = tf.squeeze(t, axis=-1)
        else:
            raise ValueError(f"{name} must have shape [batch] or [batch, 1], got shape {t.shape}")
    if not (t.dtype.is_integer or t.dtype.is_floating) or t.dtype == tf.uint64:
        raise ValueError(
            f"{name} must be integer (up to int64) or integral float lengths, got dtype "
            f"{t.dtype.name}"
        )
    if t.dtype not in (tf.int32, tf.int64) and t.dtype.is_integer:
        t = tf.cast(t, tf.int64)  # int8, int16, uint8, uint16, uint32: exact
    limit, limit_note, dynamic = _length_limit(bounds)
    rule = f"{name} must be integers in [0, {limit}] (integral floats are accepted)"
    if length_check_available():
        sizes = [
            (
                tf.shape(value)[axis],
                f" (the size of {label} axis {axis}); {name} must be integers no larger "
                "than that (integral floats are accepted)",
            )
            for label, value, axis in dynamic
        ]
        try:
            checked = check_lengths(
                t, name, limit=limit, note=f"{limit_note}; {rule}", bounds=sizes
            )
        except tf.errors.InvalidArgumentError as exc:  # eagerly: raised at once
            raise ValueError(_op_message(exc.message)) from None
        return checked
    # Stand-ins, where the op cannot run.
    if t.dtype.is_floating and not in_xla():
        try:
            t = integral_lengths(t, name)
        except tf.errors.InvalidArgumentError as exc:  # eager: raised at once
            raise ValueError(exc.message) from None
    if t.dtype.is_integer:
        negative = t < 0 if t.dtype.min < 0 else tf.zeros_like(t, tf.bool)
        bad = negative
        if t.dtype.max > limit:  # a bare int32 cast would wrap those over MAX_LENGTH
            bad = tf.logical_or(bad, t > tf.constant(limit, t.dtype))
    else:  # floats under XLA
        bad = float_length_flaws(t)
        if limit < MAX_LENGTH:
            bad = tf.logical_or(bad, tf.cast(t, tf.float64) > float(limit))
        negative = tf.logical_and(tf.equal(tf.math.floor(t), t), t < 0)  # whole and < 0
    if tf.executing_eagerly() and hasattr(t, "numpy"):
        flags = bad.numpy()
        if flags.any():
            values = t.numpy()
            at = int(np.argmax(flags))
            raise ValueError(
                f"{rule}{limit_note}, got {name}[{at}]={values[at]!r} in {values.tolist()!r}"
            )
    elif not in_xla():
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)), [f"{rule}, got", t], summarize=16
        )
        with tf.control_dependencies([check]):
            t = tf.identity(t)
    safe = tf.where(bad, tf.zeros_like(t), t)
    out = tf.where(bad, tf.constant(invalid, tf.int32), tf.cast(safe, tf.int32))
    if invalid < 0:
        shown = tf.logical_and(negative, tf.cast(t, tf.float64) >= -float(MAX_LENGTH))
        out = tf.where(shown, tf.cast(tf.where(shown, t, tf.zeros_like(t)), tf.int32), out)
    return _assert_within(out, name, dynamic)


def _assert_within(lengths, name, bounds):
    """``lengths`` once each is at most the run-time size of every ``bounds`` axis
    (the stand-in for the check op's ``bounds``; nothing under XLA, where
    assertions are compiled away)."""
    if not bounds or in_xla():
        return lengths
    checks = [
        tf.debugging.assert_less_equal(
            lengths,
            tf.shape(value)[axis],
            message=f"{name} must be at most the size of {label} axis {axis}",
            summarize=16,
        )
        for label, value, axis in bounds
    ]
    with tf.control_dependencies(checks):
        return tf.identity(lengths)


def op_lengths(lengths, checked, name):
    """The lengths to hand the fused mel op: ``checked`` (from :func:`as_lengths`),
    except under XLA without the length check's custom call, where an invalid
    entry must reach the op (or its reference), which refuses it (the terms'
    copy has it as 0)."""
    if checked is None or not in_xla() or xla_length_check_available():
        return checked
    return as_lengths(lengths, name, invalid=-1)


def _as_float(x, dtype=_F32):
    return tf.cast(tf.convert_to_tensor(x), dtype)


def _setting(x, dtype):
    """A loss setting in ``dtype``: a tensor is cast (a float32 tensor setting
    must not meet float64 inputs uncast); a Python number stays one."""
    return tf.cast(x, dtype) if tf.is_tensor(x) else x


def compute_dtype(*values):
    """What a module function computes in: float64 when one of its float
    inputs is float64 (contract 6: plain functions, no cast down), else
    float32 (half precision included). XTTSLoss's terms stay in float32."""
    for x in values:
        if x is None:
            continue
        dtype = x.dtype if hasattr(x, "dtype") else tf.convert_to_tensor(x).dtype
        if tf.as_dtype(dtype) == tf.float64:
            return tf.float64
    return _F32


def _squeeze_last(x, name):
    """[B, N, 1] -> [B, N] (rank-2 inputs are kept)."""
    if x.shape.rank == 3:
        if x.shape[-1] is not None and x.shape[-1] != 1:
            raise ValueError(f"{name} must have shape [batch, n, 1] or [batch, n], got {x.shape}")
        return tf.squeeze(x, -1)
    if x.shape.rank is not None and x.shape.rank != 2:
        raise ValueError(f"{name} must have shape [batch, n, 1] or [batch, n], got {x.shape}")
    return x


def _sanitise(*xs):
    """(finite mask of all, each x with non-finite entries replaced by 0)."""
    finite = tf.math.is_finite(xs[0])
    for x in xs[1:]:
        finite = tf.logical_and(finite, tf.math.is_finite(x))
    return finite, [tf.where(finite, x, tf.zeros_like(x)) for x in xs]


def _position_mask(lengths, n):
    """[B, n] bool: position < length (all True without lengths)."""
    return tf.range(n)[tf.newaxis, :] < lengths[:, tf.newaxis]


def _count(mask, dtype=_F32):
    return tf.reduce_sum(tf.cast(mask, dtype))


# ------------------------------------------------------------- reductions
def per_sample_stats(elem, finite, lengths):
    """Per-sample mean over valid finite positions, then the mean over B.

    ``elem`` [B, N, ...] (computed from sanitised inputs), ``finite`` same
    shape, ``lengths`` int32 [B] masking axis 1, or None for the plain mean.
    """
    zero = tf.zeros_like(elem)
    if lengths is None:
        ok = finite
        return TermStats(
            tf.reduce_sum(tf.where(ok, elem, zero)),
            _count(ok, elem.dtype),  # exact past 2**24 elements in float64
            _count(tf.logical_not(finite)),
        )
    valid = _position_mask(lengths, tf.shape(elem)[1])
    for _ in range(elem.shape.rank - 2):
        valid = valid[..., tf.newaxis]
    valid = tf.broadcast_to(valid, tf.shape(elem))
    ok = tf.logical_and(valid, finite)
    axes = list(range(1, elem.shape.rank))
    sums = tf.reduce_sum(tf.where(ok, elem, zero), axis=axes)
    counts = tf.reduce_sum(tf.cast(ok, elem.dtype), axis=axes)
    per_sample = tf.math.divide_no_nan(sums, counts)
    return TermStats(
        tf.reduce_sum(per_sample),
        tf.cast(tf.shape(elem)[0], elem.dtype),
        _count(tf.logical_and(valid, tf.logical_not(finite))),
    )


def stats_value(stats, clip=None):
    """``num / den`` (0 when ``den`` is 0), clipped for terms that clip their batch value."""
    value = tf.math.divide_no_nan(stats.num, tf.cast(stats.den, stats.num.dtype))
    if clip is not None:
        value = tf.clip_by_value(value, clip[0], clip[1])
    return value


# ------------------------------------------------------------------ terms
#: Stop probabilities are clipped to [STOP_PROB_MIN, 1 - STOP_PROB_MIN] (contract 3.2).
STOP_PROB_MIN = 1e-7


def stop_stats(
    target,
    pred,
    lengths,
    positive_weight=5.0,
    label_smoothing=0.1,
    from_logits=False,
    *,
    fused=True,
    dtype=_F32,
):
    """Contract 3.2: weighted BCE on probabilities (or logits), per-sample mean over t < L.

    ``fused``: probabilities go through the fused stop-token op where
    :func:`fused_stop_op_used` says so; ``False`` computes them with TF ops
    everywhere (what XLA compiles; benchmarks compare the two). ``dtype``:
    what it computes in (the fused op is float32)."""
    target = _squeeze_last(_as_float(target, dtype), "stop_target")
    pred = _squeeze_last(_as_float(pred, dtype), "stop_tokens")
    positive_weight, label_smoothing = (
        _setting(x, dtype) for x in (positive_weight, label_smoothing)
    )
    if not from_logits:
        if fused and dtype == _F32 and fused_stop_op_used():
            return _fused_stop_stats(target, pred, lengths, positive_weight, label_smoothing)
        return _stop_probability_stats(target, pred, lengths, positive_weight, label_smoothing)
    finite, (y, p) = _sanitise(target, pred)
    y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    elem = tf.nn.weighted_cross_entropy_with_logits(labels=y, logits=p, pos_weight=positive_weight)
    return per_sample_stats(elem, finite, lengths)


def _fused_stop_stats(target, pred, lengths, positive_weight, label_smoothing):
    """The probability form of :func:`stop_stats` outside XLA: the element loss,
    its masking and its per-sample sums in one fused op (and one backward op),
    where the TF ops of :func:`_stop_probability_stats` are some twenty-five
    ``[B, T]`` kernels. Inside ``jit_compile=True`` XLA fuses those itself."""
    from myxtts_ops.ops import stop_token_bce

    shape = tf.shape(pred)
    op_lengths = tf.fill(shape[:1], shape[1]) if lengths is None else lengths
    sums, counts_int, nonfinite = stop_token_bce(
        target, pred, op_lengths, positive_weight, label_smoothing, STOP_PROB_MIN
    )
    counts = tf.cast(counts_int, _F32)
    if lengths is None:
        # The plain mean over every counted element (as per_sample_stats).
        num, den = tf.reduce_sum(sums), tf.reduce_sum(counts)
    else:
        # Per-sample means summed, over B (an empty sample adds 0).
        num, den = tf.reduce_sum(tf.math.divide_no_nan(sums, counts)), tf.cast(shape[0], _F32)
    return TermStats(num, den, tf.cast(nonfinite, _F32))


def _stop_probability_stats(target, pred, lengths, positive_weight, label_smoothing):
    """The probability form of :func:`stop_stats` inside XLA, with a hand-written gradient.

    The same values as autodiff of the formula, in about half the graph ops:
    autodiff's backward is some twenty element-wise ops on ``[B, T]`` (each
    ``tf.where`` and ``clip`` adds broadcasting selects), this one is one
    expression per input, and the target's is pruned when nothing reads it.
    Elements that do not count (padding, non-finite target or prediction) are
    selected out, never multiplied, so a NaN there reaches neither the value
    nor the gradient.
    """
    n = tf.shape(pred)[1]
    finite = tf.logical_and(tf.math.is_finite(target), tf.math.is_finite(pred))
    if lengths is None:
        ok = finite
        valid_count = tf.size(pred)
    else:
        ok = tf.logical_and(_position_mask(lengths, n), finite)
        valid_count = tf.reduce_sum(tf.minimum(lengths, n))
    counts_int = tf.reduce_sum(tf.cast(ok, tf.int32), axis=1)
    # Valid positions that do not count, from [B] integers (exact, no [B, T] op).
    nonfinite = tf.cast(valid_count - tf.reduce_sum(counts_int), _F32)
    counts = tf.cast(counts_int, pred.dtype)
    # num from the per-sample sums of the element loss, and d num / d elem.
    if lengths is None:
        # No lengths: the plain mean over every counted element, as
        # per_sample_stats: num is their sum.
        def numerator(sums):
            return tf.reduce_sum(sums)

        elem_weight = tf.ones_like(counts)[:, tf.newaxis]
        den = tf.reduce_sum(counts)
    else:
        # Per-sample means summed, over B (1 / n_b, 0 for an empty sample).
        def numerator(sums):
            return tf.reduce_sum(tf.math.divide_no_nan(sums, counts))

        elem_weight = tf.math.divide_no_nan(tf.ones_like(counts), counts)[:, tf.newaxis]
        den = tf.cast(tf.shape(pred)[0], pred.dtype)
    lo = STOP_PROB_MIN
    scale, shift = 1.0 - label_smoothing, 0.5 * label_smoothing

    @tf.custom_gradient
    def total(t, p):
        pc = tf.clip_by_value(p, lo, 1.0 - lo)
        q = 1.0 - pc
        y = t * scale + shift
        wy = positive_weight * y
        ny = 1.0 - y
        log_p = tf.math.log(pc)
        log_q = tf.math.log(q)
        # The element loss is -(wy log p + ny log q); the sign is applied to the
        # per-sample sums (exact: the same sums, negated).
        sums = tf.reduce_sum(tf.where(ok, wy * log_p + ny * log_q, 0.0), axis=1)
        num = numerator(-sums)

        def grad(upstream):
            coef = upstream * elem_weight
            # pc == p: not clipped (a bound itself passes, as tf.clip_by_value).
            inside = tf.logical_and(ok, tf.equal(pc, p))
            d_pred = ny / q - wy / pc
            d_true = -scale * (positive_weight * log_p - log_q)
            return tf.where(ok, coef * d_true, 0.0), tf.where(inside, coef * d_pred, 0.0)

        return num, grad

    return TermStats(total(target, pred), den, nonfinite)


def attention_stats(weights, text_lengths, mel_lengths, dtype=_F32):
    """Contract 3.3: KL(prior || mean-over-heads attention) per valid (t, j) pair,
    per-sample sum / valid pairs clipped to [0, 200], then the mean over B.

    The attention tensor is the largest input of the loss ([B, H, T, U]), so it
    is read once: the mean over heads comes first, and a non-finite value in any
    head makes that mean non-finite, which excludes the pair (and zeroes its
    gradient in every head). The prior has no gradient and is built on [B, T, U].
    The gradient is hand-written: one [B, T, U] expression broadcast over the
    heads, where autodiff would chain some ten [B, T, U] ops through the
    selects and clips (about a quarter of the term's cost at [32, 4, 1000, 150]).
    """
    a = _as_float(weights, dtype)
    if a.shape.rank != 4:
        raise ValueError(
            f"attention_weights must have shape [batch, heads, frames, tokens], got {a.shape}"
        )
    abar = tf.reduce_mean(a, axis=1)  # [B, Tq, Tk]
    shape = tf.shape(abar)
    tq, tk = shape[1], shape[2]
    lx = tf.cast(text_lengths, dtype)
    lm = tf.cast(mel_lengths, dtype)
    ratio = tf.maximum(lx - 1.0, 1.0) / tf.maximum(lm - 1.0, 1.0)  # [B]
    mu = ratio[:, tf.newaxis] * tf.cast(tf.range(tq), dtype)[tf.newaxis, :]  # [B, Tq]
    j = tf.cast(tf.range(tk), dtype)
    prior = tf.exp(tf.square(mu[:, :, tf.newaxis] - j) * -0.25)  # = -(x^2) / 4 exactly
    prior = prior / (tf.reduce_sum(prior, axis=-1, keepdims=True) + 1e-8)
    prior = tf.clip_by_value(prior, 1e-8, 1.0 - 1e-8)
    prior_log_prior = prior * tf.math.log(prior)
    valid = tf.logical_and(
        _position_mask(mel_lengths, tq)[:, :, tf.newaxis],
        _position_mask(text_lengths, tk)[:, tf.newaxis, :],
    )
    ok = tf.logical_and(valid, tf.math.is_finite(abar))
    counts_int = tf.reduce_sum(tf.cast(ok, tf.int32), axis=[1, 2])
    counts = tf.maximum(tf.cast(counts_int, dtype), 1.0)
    heads = tf.cast(tf.shape(a)[1], dtype)
    # Valid pairs that do not count, from [B] integers (exact, no [B, T, U] op).
    valid_pairs = tf.minimum(mel_lengths, tq) * tf.minimum(text_lengths, tk)
    nonfinite = tf.cast(tf.reduce_sum(valid_pairs) - tf.reduce_sum(counts_int), _F32)

    @tf.custom_gradient
    def total(weights_in, mean):
        # `weights_in` is only there to receive the gradient: the value reads
        # the mean over heads, computed once above.
        # Pairs that do not count (NaN included) are selected out after the math.
        safe = tf.clip_by_value(mean, 1e-8, 1.0 - 1e-8)
        # E log(E / A) = E log E - E log A, with E log E constant.
        kl = tf.where(ok, prior_log_prior - prior * tf.math.log(safe), tf.zeros_like(safe))
        mean_kl = tf.reduce_sum(kl, axis=[1, 2]) / counts
        per_sample = tf.clip_by_value(mean_kl, 0.0, 200.0)

        def grad(upstream):
            # d sum_b per_sample_b / d a[b, h, t, j]: the clip passes (bounds
            # included, as tf.clip_by_value), 1 / count_b, -E / A where A was
            # not clipped, 1 / H for every head; zero where the pair does not count.
            coef = tf.where(
                tf.logical_and(mean_kl >= 0.0, mean_kl <= 200.0), upstream / (counts * heads), 0.0
            )
            inside = tf.logical_and(ok, tf.equal(safe, mean))
            g = tf.where(inside, -prior / safe, 0.0) * coef[:, tf.newaxis, tf.newaxis]
            return tf.broadcast_to(g[:, tf.newaxis], tf.shape(weights_in)), None

        return tf.reduce_sum(per_sample), grad

    return TermStats(total(a, abar), tf.cast(shape[0], dtype), nonfinite)


def duration_stats(pred, target, text_lengths, dtype=_F32):
    """Contract 3.4: squared clipped log-duration error, per-sample mean (clip of the value: [0, 25])."""
    pred, target = _as_float(pred, dtype), _as_float(target, dtype)
    finite, (p, d) = _sanitise(pred, target)
    delta = tf.clip_by_value(tf.math.log1p(tf.nn.relu(p)) - tf.math.log1p(tf.nn.relu(d)), -5.0, 5.0)
    return per_sample_stats(tf.square(delta), finite, text_lengths)


def _compressed_stats(pred, target, lengths, compress, clip, names, dtype):
    pred = _squeeze_last(_as_float(pred, dtype), names[0])
    target = _squeeze_last(_as_float(target, dtype), names[1])
    finite, (p, t) = _sanitise(pred, target)
    elem = tf.clip_by_value(tf.abs(compress(p) - compress(t)), 0.0, clip)
    return per_sample_stats(elem, finite, lengths)


def _signed_log(x):
    return tf.sign(x) * tf.math.log1p(tf.abs(x))


def _relu_log(x):
    return tf.math.log1p(tf.nn.relu(x))


def pitch_stats(pred, target, lengths, names=("pitch_output", "pitch_target"), dtype=_F32):
    """Contract 3.5: |c(pred) - c(target)| clipped at 5, c(x) = sign(x) log(1 + |x|)."""
    return _compressed_stats(pred, target, lengths, _signed_log, 5.0, names, dtype)


def energy_stats(pred, target, lengths, names=("energy_output", "energy_target"), dtype=_F32):
    """Contract 3.6: |g(pred) - g(target)| clipped at 8, g(x) = log(1 + relu(x))."""
    return _compressed_stats(pred, target, lengths, _relu_log, 8.0, names, dtype)


def speaking_rate_stats(pred, target, text_lengths, dtype=_F32):
    """Contract 3.8 with the per-sample normalisation (the original's B x B broadcast is defect 10)."""
    pred = _squeeze_last(_as_float(pred, dtype), "prosody_speaking_rate")
    target = _squeeze_last(_as_float(target, dtype), "prosody_speaking_rate_target")
    finite, (p, t) = _sanitise(pred, target)
    return per_sample_stats(tf.clip_by_value(tf.abs(p - t), 0.0, 10.0), finite, text_lengths)


def diffusion_stats(pred, target, lengths, dtype=_F32):
    """Contract 3.7: squared error, mean over the last axis, per-sample mean over t < L.

    An element whose square overflows its dtype (|error| >= 2**64 in float32,
    2**512 in float64) counts as non-finite, as one whose loss overflows does
    in the mel op: left out of the mean and of the gradient.
    """
    pred, target = _as_float(pred, dtype), _as_float(target, dtype)
    finite, (p, t) = _sanitise(pred, target)
    d = p - t
    fits = tf.abs(d) < 2.0 ** (np.finfo(dtype.as_numpy_dtype).maxexp // 2)
    d = tf.where(fits, d, tf.zeros_like(d))
    return per_sample_stats(tf.square(d), tf.logical_and(finite, fits), lengths)


def contrastive_stats(labels, embeddings, temperature=0.1, margin=0.2, dtype=_F32):
    """Contract 3.9 (ContrastiveSpeakerLoss), over the pairs of the global batch.

    The term is not a sum over samples (its pairs span the batch), so under
    ``tf.distribute`` every replica gathers all replicas' labels and
    embeddings and computes the global value ``V``; each contributes
    ``(V / R, 1 / R)`` so that the reduced value is ``V``, and the
    all-gather's gradient (a SUM over the replicas, then this replica's rows)
    gives each replica's embeddings their single-device gradient.
    ``nonfinite`` counts this replica's non-finite rows.
    """
    e = _as_float(embeddings, dtype)
    temperature, margin = _setting(temperature, dtype), _setting(margin, dtype)
    labels = tf.convert_to_tensor(labels)
    # Integer ids compare as they are (through float32, ids past 2**24 would
    # merge). Float ones (Keras casts y_true to float32) must be whole numbers
    # in [0, 2**31 - 1], checked as lengths are: a cast would merge NaN, inf
    # or 2.5 into some speaker silently, and differently under XLA.
    if not labels.dtype.is_integer:
        labels = as_lengths(labels, "speaker_labels")
    labels = tf.cast(labels, tf.int64)
    row_ok = tf.reduce_all(tf.math.is_finite(e), axis=-1)
    nonfinite = _count(tf.logical_not(row_ok))
    ctx = tf.distribute.get_replica_context()
    replicas = 1 if ctx is None else int(ctx.num_replicas_in_sync)
    if replicas > 1:
        # Two gathers: the labels (int64) and the embeddings (float) cannot share one.
        labels = ctx.all_gather(labels, axis=0)
        e = ctx.all_gather(e, axis=0)
        row_ok = tf.reduce_all(tf.math.is_finite(e), axis=-1)
    e = tf.where(row_ok[:, tf.newaxis], e, tf.zeros_like(e))
    z = tf.math.l2_normalize(e, axis=-1, epsilon=1e-12)
    sim = tf.matmul(z, z, transpose_b=True) / temperature
    b = tf.shape(labels)[0]
    pair_ok = tf.logical_and(row_ok[:, tf.newaxis], row_ok[tf.newaxis, :])
    not_self = tf.logical_not(tf.eye(b, dtype=tf.bool))
    same = tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :])
    pos = tf.cast(tf.logical_and(tf.logical_and(same, not_self), pair_ok), dtype)
    neg = tf.cast(tf.logical_and(tf.logical_and(tf.logical_not(same), not_self), pair_ok), dtype)
    value = -tf.reduce_sum(sim * pos) / tf.maximum(tf.reduce_sum(pos), 1.0) + tf.reduce_sum(
        tf.nn.relu(sim * neg - margin) * neg
    ) / tf.maximum(tf.reduce_sum(neg), 1.0)
    return TermStats(value / replicas, tf.constant(1.0 / replicas, _F32), nonfinite)


def participation_stats(y_true, y_pred):
    """Contract 3.10: 1e-6 * mean(pred^2) for each prediction whose target is missing."""
    value = tf.constant(0.0, _F32)
    for pred_key, target_key in PARTICIPATION_PAIRS:
        if pred_key in y_pred and target_key not in y_true:
            p = _as_float(y_pred[pred_key])
            p = tf.where(tf.math.is_finite(p), p, tf.zeros_like(p))
            value = value + PARTICIPATION_COEFFICIENT * tf.reduce_mean(tf.square(p))
    return TermStats(value, tf.constant(1.0, _F32), tf.constant(0.0, _F32))


# -------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Term:
    """One loss term: active when every key of ``true_keys``/``pred_keys`` is present.

    ``stats(y_true, y_pred, lengths, config, fused) -> TermStats``; ``lengths`` maps
    ``"mel_lengths"``/``"text_lengths"`` to int32 tensors (or None); ``fused``:
    whether the loss may run this project's ops (``implementation="fused"``);
    ``False`` keeps the term in TF ops (the reference, which needs no op library).
    ``weight``: the config field of its weight (None: coefficient 1).
    ``clip``: bounds of the batch value (applied after the reduction).
    """

    name: str
    true_keys: tuple
    pred_keys: tuple
    optional_true_keys: tuple
    weight: str
    stats: object
    clip: tuple = None
    always: bool = False

    def active(self, y_true, y_pred):
        return self.always or (
            all(k in y_true for k in self.true_keys) and all(k in y_pred for k in self.pred_keys)
        )


TERMS = (
    Term("mel_loss", ("mel_target",), ("mel_output",), ("mel_lengths",), "mel_loss_weight", None),
    Term(
        "stop_loss",
        ("stop_target",),
        ("stop_tokens",),
        ("mel_lengths",),
        "stop_loss_weight",
        lambda yt, yp, ln, c, fused: stop_stats(
            yt["stop_target"],
            yp["stop_tokens"],
            ln["mel_lengths"],
            c.stop_positive_weight,
            c.stop_label_smoothing,
            c.stop_from_logits,
            fused=fused,
        ),
    ),
    Term(
        "attention_loss",
        ("text_lengths", "mel_lengths"),
        ("attention_weights",),
        (),
        "attention_loss_weight",
        lambda yt, yp, ln, c, fused: attention_stats(
            yp["attention_weights"], ln["text_lengths"], ln["mel_lengths"]
        ),
    ),
    Term(
        "duration_loss",
        ("duration_target", "text_lengths"),
        ("duration_pred",),
        (),
        "duration_loss_weight",
        lambda yt, yp, ln, c, fused: duration_stats(
            yp["duration_pred"], yt["duration_target"], ln["text_lengths"]
        ),
        clip=(0.0, 25.0),
    ),
    Term(
        "pitch_loss",
        ("pitch_target", "mel_lengths"),
        ("pitch_output",),
        (),
        "pitch_loss_weight",
        lambda yt, yp, ln, c, fused: pitch_stats(
            yp["pitch_output"], yt["pitch_target"], ln["mel_lengths"]
        ),
    ),
    Term(
        "energy_loss",
        ("energy_target", "mel_lengths"),
        ("energy_output",),
        (),
        "energy_loss_weight",
        lambda yt, yp, ln, c, fused: energy_stats(
            yp["energy_output"], yt["energy_target"], ln["mel_lengths"]
        ),
    ),
    Term(
        "prosody_pitch_loss",
        ("prosody_pitch_target", "text_lengths"),
        ("prosody_pitch",),
        (),
        "prosody_pitch_loss_weight",
        lambda yt, yp, ln, c, fused: pitch_stats(
            yp["prosody_pitch"],
            yt["prosody_pitch_target"],
            ln["text_lengths"],
            ("prosody_pitch", "prosody_pitch_target"),
        ),
    ),
    Term(
        "prosody_energy_loss",
        ("prosody_energy_target", "text_lengths"),
        ("prosody_energy",),
        (),
        "prosody_energy_loss_weight",
        lambda yt, yp, ln, c, fused: energy_stats(
            yp["prosody_energy"],
            yt["prosody_energy_target"],
            ln["text_lengths"],
            ("prosody_energy", "prosody_energy_target"),
        ),
    ),
    Term(
        "speaking_rate_loss",
        ("prosody_speaking_rate_target", "text_lengths"),
        ("prosody_speaking_rate",),
        (),
        "speaking_rate_loss_weight",
        lambda yt, yp, ln, c, fused: speaking_rate_stats(
            yp["prosody_speaking_rate"], yt["prosody_speaking_rate_target"], ln["text_lengths"]
        ),
    ),
    Term(
        "voice_similarity_loss",
        ("speaker_labels",),
        ("speaker_embedding",),
        (),
        "voice_similarity_loss_weight",
        lambda yt, yp, ln, c, fused: contrastive_stats(
            yt["speaker_labels"],
            yp["speaker_embedding"],
            c.contrastive_temperature,
            c.contrastive_margin,
        ),
    ),
    Term(
        "diffusion_loss",
        ("diffusion_noise_target",),
        ("diffusion_noise_pred",),
        ("mel_lengths",),
        "diffusion_loss_weight",
        lambda yt, yp, ln, c, fused: diffusion_stats(
            yp["diffusion_noise_pred"], yt["diffusion_noise_target"], ln["mel_lengths"]
        ),
    ),
    Term(
        "gradient_participation_loss",
        (),
        (),
        (),
        None,
        lambda yt, yp, ln, c, fused: participation_stats(yt, yp),
        always=True,
    ),
)
TERM_NAMES = tuple(t.name for t in TERMS)
KNOWN_TRUE_KEYS = frozenset(k for t in TERMS for k in t.true_keys + t.optional_true_keys)
KNOWN_PRED_KEYS = frozenset(k for t in TERMS for k in t.pred_keys) | {
    p for p, _ in PARTICIPATION_PAIRS
}


def term_value(term, stats):
    return stats_value(stats, term.clip)


# -------------------------------------------------------------- input checks
# Each key's dimensions as symbols: B batch, T mel frames, M mel bins, U text
# tokens, H heads, Q and K the attention's frames and tokens (not tied to T
# and U), D embedding size, C the diffusion noise's channels (M in the
# contract; not tied to the mel term's bins); 1 a literal 1; "?" anything. A key may allow
# several ranks (the trailing 1 is optional where the terms squeeze it).
KEY_SHAPES = {
    "mel_target": [("B", "T", "M")],
    "mel_output": [("B", "T", "M")],
    "mel_lengths": [("B",), ("B", 1)],
    "text_lengths": [("B",), ("B", 1)],
    "stop_target": [("B", "T", 1), ("B", "T")],
    "stop_tokens": [("B", "T", 1), ("B", "T")],
    "attention_weights": [("B", "H", "Q", "K")],
    "duration_target": [("B", "U")],
    "duration_pred": [("B", "U")],
    "pitch_target": [("B", "T", 1), ("B", "T")],
    "pitch_output": [("B", "T", 1), ("B", "T")],
    "energy_target": [("B", "T", 1), ("B", "T")],
    "energy_output": [("B", "T", 1), ("B", "T")],
    "prosody_pitch_target": [("B", "U", 1), ("B", "U")],
    "prosody_pitch": [("B", "U", 1), ("B", "U")],
    "prosody_energy_target": [("B", "U", 1), ("B", "U")],
    "prosody_energy": [("B", "U", 1), ("B", "U")],
    "prosody_speaking_rate_target": [("B", "U", 1), ("B", "U")],
    "prosody_speaking_rate": [("B", "U", 1), ("B", "U")],
    "speaker_labels": [("B",)],
    "speaker_embedding": [("B", "D")],
    "diffusion_noise_target": [("B", "T", "C")],
    "diffusion_noise_pred": [("B", "T", "C")],
}
#: The axes whose positions each length counts, by their KEY_SHAPES symbols.
LENGTH_SYMBOLS = {"mel_lengths": ("T", "Q"), "text_lengths": ("U", "K")}


def length_bounds(key, y_true, y_pred):
    """``as_lengths``' ``bounds`` for the length ``key``: every axis of the
    inputs present whose positions it counts."""
    bounds = []
    for where, d in (("y_true", y_true), ("y_pred", y_pred)):
        for other, value in d.items():
            pattern = _key_pattern(other, tf.TensorShape(_shape_of(value)).rank)
            for axis, sym in enumerate(pattern or ()):
                if sym in LENGTH_SYMBOLS[key]:
                    bounds.append((f"{where}[{other}]", value, axis))
    return bounds


def _key_pattern(key, rank):
    """The KEY_SHAPES pattern of ``key`` for an input of ``rank`` (None: no such pattern)."""
    return _pattern_of_rank(KEY_SHAPES.get(key, ()), rank)


def _pattern_of_rank(patterns, rank):
    """The one of ``patterns`` (a KEY_SHAPES entry) with ``rank`` symbols, or None."""
    return next((p for p in patterns if len(p) == rank), None)


def _shape_of(value):
    shape = getattr(value, "shape", None)
    return np.shape(value) if shape is None else shape


def _edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _close_key(key, known):
    """A known key within 2 edits of ``key`` (a typo or a plural), else None.

    Only near-identical names count: a model's other outputs (``text_encoded``,
    ``encoder_output``) must not be mistaken for misspelt inputs.
    """
    key = str(key)
    if len(key) < 5:
        return None
    best = min(sorted(known), key=lambda k: _edit_distance(key, k))
    return best if _edit_distance(key, best) <= 2 else None


# A word that ends in len/lens/length/lengths (a number may follow): seqlen,
# ilens, mel_len2, frameLengths; not silence, valence, filename.
_LENGTH_WORD = re.compile(r"[a-z]*(len|lens|length|lengths)[0-9]*")


def _names_lengths(key):
    """Whether a word of ``key`` names lengths (``mel_lens``, ``ilens``,
    ``frameLengths``), not a word that merely contains ``len`` (``silence_mask``)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower()
    return any(_LENGTH_WORD.fullmatch(w) for w in re.split(r"[^a-z0-9]+", words))


def check_inputs(y_true, y_pred, extra_keys=()):
    """Refuse misspelt keys and static shapes that disagree with the mel batch.

    A key that is not known but close to a known one (``mel_length``,
    ``stop_token``) is a ``ValueError`` naming both: ignoring it would change
    the loss silently (every frame valid, a term dropped); so is an unknown
    ``y_true`` key that names lengths (``mel_lens``, ``frame_lengths``). Other
    keys that look like nothing known are left alone (a model may return more
    outputs, a pipeline more targets), as are
    the ``extra_keys`` of registered extra terms. ``None`` values are refused.
    Static dimensions of every known key are checked against the symbols of
    :data:`KEY_SHAPES` (B: the batch of the first key that fixes it, T the
    mel frames, ...). Dimensions unknown when a graph is traced (``None``, as
    ``reduce_retracing`` makes them) are checked when it runs, by one check op
    the caller runs before using the inputs, naming the keys and both sizes;
    under ``jit_compile=True`` (the MyXTTS trainer's default, with
    ``reduce_retracing``) the same op fails the compilation, where every size
    is known. Every known input must be a dense tensor (or array) of real
    numbers whose rank is known when traced: a ragged or sparse tensor, a
    complex, string or bool dtype, or an unknown rank is a ``ValueError``
    naming the input (a cast would drop an imaginary part, or a term would
    fail deep inside with a message naming none).

    Returns the list of those checks (empty eagerly and for static shapes).
    """
    for where, d, known, other in (
        ("y_true", y_true, KNOWN_TRUE_KEYS, KNOWN_PRED_KEYS),
        ("y_pred", y_pred, KNOWN_PRED_KEYS, KNOWN_TRUE_KEYS),
    ):
        for key, value in d.items():
            if value is None:
                raise ValueError(f"{where}[{key!r}] is None: omit absent inputs instead")
            if key in known:
                _check_real_dense(f"{where}[{key!r}]", value)
            if key in known or key in extra_keys:
                continue
            if key in other:
                raise ValueError(
                    f"{where} has key {key!r}, which belongs in "
                    f"{'y_pred' if where == 'y_true' else 'y_true'}"
                )
            close = _close_key(key, known)
            if close is not None:
                raise ValueError(
                    f"unknown {where} key {key!r}: did you mean {close!r}? "
                    f"(known {where} keys: {', '.join(sorted(known))})"
                )
            if where == "y_true" and _names_lengths(key):
                # Lengths under another name would be ignored: every frame
                # (padding included) would count, silently.
                raise ValueError(
                    f"unknown y_true key {key!r}: lengths go in "
                    f"{', '.join(repr(k) for k in LENGTH_SYMBOLS)}; rename the key if it "
                    f"holds something else (known y_true keys: {', '.join(sorted(known))})"
                )
    return check_shapes(
        [
            (f"{where}[{key!r}]", f"{where}[{key}]", value, KEY_SHAPES[key])
            for where, d in (("y_true", y_true), ("y_pred", y_pred))
            for key, value in d.items()
            if key in KEY_SHAPES
        ]
    )


def _check_real_dense(label, value):
    """Refuse what no term can read as it is (rank and sizes: :func:`check_shapes`)."""
    if isinstance(value, (tf.RaggedTensor, tf.SparseTensor, tf.compat.v1.SparseTensorValue)):
        raise ValueError(
            f"{label} must be a dense tensor, got a {type(value).__name__}: pad it "
            "(RaggedTensor.to_tensor(), tf.sparse.to_dense) and give the lengths"
        )
    dtype = getattr(value, "dtype", None)
    if dtype is None:  # Python numbers or lists: as TensorFlow converts them
        dtype = tf.convert_to_tensor(value).dtype
    dtype = tf.as_dtype(dtype)
    if not (dtype.is_floating or dtype.is_integer):
        raise ValueError(
            f"{label} must hold real numbers (a float or integer dtype), got {dtype.name}"
        )


#: Symbols whose static size may not be 0, and why.
_AT_LEAST_ONE = {"H": "a mean over no heads is NaN for every pair, which the term drops"}


def check_shapes(entries):
    """Refuse shapes that disagree with their :data:`KEY_SHAPES`-style patterns.

    ``entries``: ``(label, plain label, value, patterns)``, the plain label
    (without quotes) for the run-time checks' messages. Every symbol names
    one size across all entries (B the batch of the first entry that fixes
    it, ...). Static sizes that disagree are a ``ValueError`` naming the input,
    its shape and where the other size came from, as are an unknown rank and a
    static 0 for a symbol of :data:`_AT_LEAST_ONE`; sizes unknown when a graph
    is traced are left to the returned checks (see :func:`check_inputs`).
    """
    bound = {}  # symbol -> (size, label)
    seen = {}  # symbol -> [(plain label, axis, value, static size or None)]
    for label, plain, value, patterns in entries:
        shape = tf.TensorShape(_shape_of(value))
        if shape.rank is None:
            raise ValueError(
                f"{label} has a rank unknown when the step is traced: give the step an "
                "input_signature with the ranks of its inputs (sizes may stay None), or "
                "tf.ensure_shape the input"
            )
        pattern = _pattern_of_rank(patterns, shape.rank)
        if pattern is None:
            allowed = " or ".join("[" + ", ".join(map(str, p)) + "]" for p in patterns)
            raise ValueError(f"{label} must have shape {allowed}, got {shape}")
        for axis, (sym, size) in enumerate(zip(pattern, shape.as_list())):
            if sym != "?":
                seen.setdefault(sym, []).append((plain, axis, value, size))
            if size is None or sym == "?":
                continue
            if size == 0 and sym in _AT_LEAST_ONE:
                raise ValueError(
                    f"{label} has shape {shape}: its axis {axis} ({sym}) must be at least 1 "
                    f"({_AT_LEAST_ONE[sym]})"
                )
            if sym == 1:
                if size != 1:
                    raise ValueError(
                        f"{label} must have shape [{', '.join(map(str, pattern))}], got {shape}"
                    )
                continue
            if sym in bound and bound[sym][0] != size:
                raise ValueError(
                    f"{label} has shape {shape}: its axis {axis} ({sym}) is {size}, "
                    f"but {bound[sym][1]} gives {sym} = {bound[sym][0]}"
                )
            bound.setdefault(sym, (size, label))
    return _dynamic_shape_checks(seen)


def _dynamic_shape_checks(seen):
    """Equality of each symbol's sizes where one was unknown at trace time: one
    check op, run when the graph runs (under XLA, when it compiles, where every
    size is static); TF assertions where that op cannot run (none under XLA)."""
    if tf.executing_eagerly():
        return []
    pairs = []  # (size, expected, label, expected label)
    for sym, uses in seen.items():
        if sym == 1:  # an axis of size 1 by definition
            for label, axis, value, size in uses:
                if size is None:
                    pairs.append(
                        (tf.shape(value)[axis], 1, f"{label} axis {axis}", "the size it must have")
                    )
            continue
        if len(uses) < 2 or all(size is not None for *_, size in uses):
            continue
        ref_label, ref_axis, ref_value, ref_size = uses[0]
        ref = ref_size if ref_size is not None else tf.shape(ref_value)[ref_axis]
        for label, axis, value, size in uses[1:]:
            if size is not None and ref_size is not None:
                continue  # both static: checked above
            pairs.append(
                (
                    tf.shape(value)[axis],
                    ref,
                    f"{label} axis {axis} ({sym})",
                    f"{ref_label} axis {ref_axis}",
                )
            )
    if not pairs:
        return []
    if length_check_available():
        return [check_sizes(pairs)]
    if in_xla():
        return []
    return [
        tf.debugging.assert_equal(
            tf.cast(size, tf.int32),
            tf.cast(expected, tf.int32),
            message=f"{label} must equal {expected_label}",
        )
        for size, expected, label, expected_label in pairs
    ]


# ------------------------------------------------------ module-level functions
def _opt_lengths(lengths, name, bounds=()):
    return None if lengths is None else as_lengths(lengths, name, bounds=bounds)


#: A module function's lengths: [B], or [B, 1] as a Keras target column.
_LENGTHS_SHAPES = [("B",), ("B", 1)]


def _shape_checked(*entries):
    """The values of ``entries`` (``(argument name, value, shapes)``, ``shapes``
    a :data:`KEY_SHAPES` entry), once their shapes agree: a module function's
    prediction and target never broadcast into each other (a ``[B, 1]``
    target against a ``[B, U]`` prediction is refused, not averaged), and once
    each is a dense tensor of real numbers of known rank (as
    :func:`check_inputs` requires of XTTSLoss's inputs)."""
    present = [(name, value, shapes) for name, value, shapes in entries if value is not None]
    for name, value, _ in present:
        _check_real_dense(name, value)
    checks = check_shapes([(name, name, value, shapes) for name, value, shapes in present])
    values = [value for _, value, _ in entries]
    if not checks:
        return values
    with tf.control_dependencies(checks):
        return [None if v is None else tf.identity(v) for v in values]


def mel_target_noise(y_true, lengths, label_smoothing, seed):
    """Deterministic target noise of the original's mel loss (contract 3.1, our decision):
    ``N(0, (s * std)^2)`` with std over the valid finite target elements,
    drawn by a stateless RNG from ``seed`` (an int64 ``[2]`` tensor or a pair).

    Under ``tf.distribute`` with several replicas both are those of the global
    batch, as on one device: the std over every replica's valid elements (three
    all-reduces), and each replica's rows of the noise drawn for the whole
    global batch (its offset from the replicas' batch sizes), so no two
    replicas add the same noise and a split batch gets the noise it would get
    whole."""
    t = tf.convert_to_tensor(y_true)
    x = tf.cast(t, _F32)
    finite = tf.math.is_finite(x)
    if lengths is not None:
        valid = _position_mask(lengths, tf.shape(x)[1])[:, :, tf.newaxis]
        finite = tf.logical_and(finite, valid)
    ctx = tf.distribute.get_replica_context()
    replicas = 1 if ctx is None else int(ctx.num_replicas_in_sync)

    def global_sum(v):
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, v) if replicas > 1 else v

    n = tf.maximum(global_sum(_count(finite)), 1.0)
    xs = tf.stop_gradient(tf.where(finite, x, tf.zeros_like(x)))
    mean = global_sum(tf.reduce_sum(xs)) / n
    var = global_sum(tf.reduce_sum(tf.where(finite, tf.square(xs - mean), tf.zeros_like(xs)))) / n
    sigma = label_smoothing * tf.sqrt(var)
    shape = tf.shape(x)
    if replicas > 1:
        sizes = ctx.all_gather(shape[:1], axis=0)  # [replicas]: each one's batch
        before = tf.range(replicas) < tf.cast(ctx.replica_id_in_sync_group, tf.int32)
        offset = tf.reduce_sum(tf.where(before, sizes, tf.zeros_like(sizes)))
        whole = standard_normal_noise(tf.concat([[tf.reduce_sum(sizes)], shape[1:]], 0), seed)
        noise = tf.slice(whole, tf.stack([offset, 0, 0]), shape)
    else:
        noise = standard_normal_noise(shape, seed)
    return tf.cast(x + noise * sigma, t.dtype)


def common_mel_dtype(y_true, y_pred):
    """The mel target and prediction in one dtype, as the fused op takes them.

    The same dtype stays as it is (half precision reaches the kernel uncast).
    Otherwise both go to the wider one (float64 if either is, else float32):
    a float32 target rounded to a float16 or bfloat16 prediction would lose
    the low bits the loss measures (bfloat16 keeps 8 bits of a log-mel value,
    so a small error becomes 0 and so does its gradient). The prediction's
    gradient comes back in its own dtype.
    """
    y_true, y_pred = tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred)
    if y_true.dtype == y_pred.dtype:
        return y_true, y_pred
    wide = compute_dtype(y_true, y_pred)
    return tf.cast(y_true, wide), tf.cast(y_pred, wide)


def standard_normal_noise(shape, seed):
    """float32 N(0, 1) noise of ``shape`` from ``seed`` (int64 ``[2]``): the same
    values eagerly, in graphs and under XLA (up to the rounding of one log, one
    sqrt and one cos per element).

    ``tf.random.stateless_normal`` draws another stream under XLA; the Philox
    bits of ``stateless_uniform`` are the same on every path, so the normals
    are made from them here (Box-Muller: 24 bits per uniform, both in (0, 1)).
    """
    bits = tf.random.stateless_uniform(
        tf.concat([[2], shape], 0),
        seed=seed,
        minval=None,
        maxval=None,
        dtype=tf.uint32,
        alg="philox",
    )
    u = (tf.cast(tf.bitwise.right_shift(bits, 8), _F32) + 0.5) * (2.0**-24)
    radius = tf.sqrt(-2.0 * tf.math.log(u[0]))
    return radius * tf.math.cos((2.0 * np.pi) * u[1])


def mel_loss(
    y_true,
    y_pred,
    lengths=None,
    label_smoothing=0.05,
    use_huber_loss=True,
    huber_delta=1.0,
    seed=0,
):
    """Contract 3.1 with the fused op: Huber (or L1), per-sample mean over
    ``t < L`` divided by ``L * M``, then the mean over B (without lengths: the
    mean over all elements). ``label_smoothing`` > 0 adds the deterministic
    target noise of :func:`mel_target_noise` (``seed``: int)."""
    import myxtts_ops

    # Before the noise, whose std would broadcast lengths of another batch
    # size, and before the common dtype, whose cast would drop an imaginary part.
    y_true, y_pred, lengths = _shape_checked(
        ("y_true", y_true, KEY_SHAPES["mel_target"]),
        ("y_pred", y_pred, KEY_SHAPES["mel_output"]),
        ("lengths", lengths, _LENGTHS_SHAPES),
    )
    y_true, y_pred = common_mel_dtype(y_true, y_pred)
    lens = _opt_lengths(lengths, "lengths", [("y_pred", y_pred, 1)])
    if label_smoothing:
        y_true = mel_target_noise(
            y_true, lens, label_smoothing, tf.constant([int(seed), 0], tf.int64)
        )
    out = myxtts_ops.masked_mel_loss(
        y_true,
        y_pred,
        op_lengths(lengths, lens, "lengths"),
        loss_type="huber" if use_huber_loss else "l1",
        huber_delta=huber_delta,
        normalization="per_sample" if lens is not None else "global",
    )
    if lens is None:
        return out.loss
    # The batch mean; 0 for an empty batch.
    return tf.math.divide_no_nan(
        tf.reduce_sum(out.per_sample), tf.cast(tf.size(out.per_sample), out.per_sample.dtype)
    )


def stop_token_loss(
    y_true, y_pred, lengths=None, positive_weight=5.0, label_smoothing=0.1, from_logits=False
):
    """Contract 3.2 (probabilities; ``from_logits=True`` for logits)."""
    y_true, y_pred, lengths = _shape_checked(
        ("y_true", y_true, KEY_SHAPES["stop_target"]),
        ("y_pred", y_pred, KEY_SHAPES["stop_tokens"]),
        ("lengths", lengths, _LENGTHS_SHAPES),
    )
    return stats_value(
        stop_stats(
            y_true,
            y_pred,
            _opt_lengths(lengths, "lengths", [("y_pred", y_pred, 1)]),
            positive_weight,
            label_smoothing,
            from_logits,
            dtype=compute_dtype(y_true, y_pred),
        )
    )


def attention_loss(attention_weights, text_lengths, mel_lengths):
    """Contract 3.3."""
    attention_weights, text_lengths, mel_lengths = _shape_checked(
        ("attention_weights", attention_weights, KEY_SHAPES["attention_weights"]),
        ("text_lengths", text_lengths, _LENGTHS_SHAPES),
        ("mel_lengths", mel_lengths, _LENGTHS_SHAPES),
    )
    return stats_value(
        attention_stats(
            attention_weights,
            as_lengths(text_lengths, "text_lengths", [("attention_weights", attention_weights, 3)]),
            as_lengths(mel_lengths, "mel_lengths", [("attention_weights", attention_weights, 2)]),
            dtype=compute_dtype(attention_weights),
        )
    )


def duration_loss(predicted_durations, target_durations, text_lengths):
    """Contract 3.4."""
    predicted_durations, target_durations, text_lengths = _shape_checked(
        ("predicted_durations", predicted_durations, KEY_SHAPES["duration_pred"]),
        ("target_durations", target_durations, KEY_SHAPES["duration_target"]),
        ("text_lengths", text_lengths, _LENGTHS_SHAPES),
    )
    return stats_value(
        duration_stats(
            predicted_durations,
            target_durations,
            as_lengths(
                text_lengths, "text_lengths", [("predicted_durations", predicted_durations, 1)]
            ),
            dtype=compute_dtype(predicted_durations, target_durations),
        ),
        (0.0, 25.0),
    )


def pitch_loss(predicted_pitch, target_pitch, sequence_lengths=None):
    """Contract 3.5."""
    predicted_pitch, target_pitch, sequence_lengths = _shape_checked(
        ("predicted_pitch", predicted_pitch, KEY_SHAPES["pitch_output"]),
        ("target_pitch", target_pitch, KEY_SHAPES["pitch_target"]),
        ("sequence_lengths", sequence_lengths, _LENGTHS_SHAPES),
    )
    return stats_value(
        pitch_stats(
            predicted_pitch,
            target_pitch,
            _opt_lengths(
                sequence_lengths, "sequence_lengths", [("predicted_pitch", predicted_pitch, 1)]
            ),
            dtype=compute_dtype(predicted_pitch, target_pitch),
        )
    )


def energy_loss(predicted_energy, target_energy, sequence_lengths=None):
    """Contract 3.6."""
    predicted_energy, target_energy, sequence_lengths = _shape_checked(
        ("predicted_energy", predicted_energy, KEY_SHAPES["energy_output"]),
        ("target_energy", target_energy, KEY_SHAPES["energy_target"]),
        ("sequence_lengths", sequence_lengths, _LENGTHS_SHAPES),
    )
    return stats_value(
        energy_stats(
            predicted_energy,
            target_energy,
            _opt_lengths(
                sequence_lengths, "sequence_lengths", [("predicted_energy", predicted_energy, 1)]
            ),
            dtype=compute_dtype(predicted_energy, target_energy),
        )
    )


def diffusion_loss(predicted_noise, target_noise, sequence_lengths=None):
    """Contract 3.7."""
    predicted_noise, target_noise, sequence_lengths = _shape_checked(
        ("predicted_noise", predicted_noise, KEY_SHAPES["diffusion_noise_pred"]),
        ("target_noise", target_noise, KEY_SHAPES["diffusion_noise_target"]),
        ("sequence_lengths", sequence_lengths, _LENGTHS_SHAPES),
    )
    return stats_value(
        diffusion_stats(
            predicted_noise,
            target_noise,
            _opt_lengths(
                sequence_lengths, "sequence_lengths", [("predicted_noise", predicted_noise, 1)]
            ),
            dtype=compute_dtype(predicted_noise, target_noise),
        )
    )


def speaking_rate_loss(predicted_rate, target_rate, text_lengths):
    """Contract 3.8, per-sample normalisation."""
    predicted_rate, target_rate, text_lengths = _shape_checked(
        ("predicted_rate", predicted_rate, KEY_SHAPES["prosody_speaking_rate"]),
        ("target_rate", target_rate, KEY_SHAPES["prosody_speaking_rate_target"]),
        ("text_lengths", text_lengths, _LENGTHS_SHAPES),
    )
    return stats_value(
        speaking_rate_stats(
            predicted_rate,
            target_rate,
            as_lengths(text_lengths, "text_lengths", [("predicted_rate", predicted_rate, 1)]),
            dtype=compute_dtype(predicted_rate, target_rate),
        )
    )


def contrastive_speaker_loss(labels, embeddings, temperature=0.1, margin=0.2):
    """Contract 3.9."""
    labels, embeddings = _shape_checked(
        ("labels", labels, KEY_SHAPES["speaker_labels"]),
        ("embeddings", embeddings, KEY_SHAPES["speaker_embedding"]),
    )
    return stats_value(
        contrastive_stats(labels, embeddings, temperature, margin, dtype=compute_dtype(embeddings))
    )


def _keras_loss_base():
    import keras

    return keras.losses.Loss


class ContrastiveSpeakerLoss(_keras_loss_base()):
    """``ContrastiveSpeakerLoss(temperature=0.1, margin=0.2)``; ``call(labels, embeddings)``."""

    def __init__(self, temperature=0.1, margin=0.2, name="contrastive_speaker_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        return contrastive_speaker_loss(y_true, y_pred, self.temperature, self.margin)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "margin": self.margin}


def create_stop_targets(mel_lengths, max_length):
    """float32 ``[B, max_length, 1]``: 1.0 exactly at frame ``L_b - 1`` (none for 0 or > max_length)."""
    lens = as_lengths(mel_lengths, "mel_lengths")
    frames = tf.range(tf.cast(max_length, tf.int32))
    hit = tf.equal(frames[tf.newaxis, :], lens[:, tf.newaxis] - 1)
    return tf.cast(hit, _F32)[:, :, tf.newaxis]


def compute_mel_statistics(mel_spectrograms):
    """(mean, population std) over (batch, time), keepdims: each ``[1, 1, M]``."""
    x = tf.convert_to_tensor(mel_spectrograms)
    mean = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
    std = tf.sqrt(tf.reduce_mean(tf.square(x - mean), axis=[0, 1], keepdims=True))
    return mean, std
