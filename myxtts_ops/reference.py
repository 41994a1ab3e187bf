"""Pure-TensorFlow reference of the fused masked mel loss (SPEC 3.2-3.4).

Plain TF ops only, so it runs everywhere TF does and compiles under XLA
(``tf.function(jit_compile=True)``). Gradients come from TF autodiff and equal
SPEC 3.3: padded and non-finite elements get exactly zero gradient (the
"double ``tf.where``" pattern keeps NaN/Inf out of the backward pass), and the
L1 derivative at ``d == 0`` is 0.

Range check of ``lengths``: outside XLA, ``lengths`` outside ``[0, T]`` raise
``tf.errors.InvalidArgumentError`` naming the sample index and the value.
XLA compiles ``Assert`` to a no-op, so under ``jit_compile=True`` a length
outside ``[0, T]`` makes its sample's ``per_sample`` and the ``loss`` NaN (and
the step a non-finite one in the state), with no gradient: a bad length never
yields a plausible number. Outside XLA the assertion runs first, so this never
applies there.

The state update mirrors ``update_state`` in ``csrc/kernels/mel_loss_math.h``
operation for operation (same summation order), so a state computed here
equals the fused op's given the same loss value. That includes the header's
one rule for a corrupted incoming state (``sanitize_state``, restated by
:func:`_sanitize_state` with the constants generated from the header) and its
rule for which elements count (``element_counts``: the element loss is
finite in the accumulation type, so an overflowing difference is excluded and
counted like a NaN input).
"""

import numpy as np
import tensorflow as tf

from myxtts_ops import state as _st
from myxtts_ops.types import MaskedMelLossCounts, MaskedMelLossOutput
from myxtts_ops.validation import (
    check_static_shapes,
    ensure_ranks,
    lengths_tensor,
    state_tensor,
    validate_args,
)

__all__ = ["masked_mel_loss", "MaskedMelLossOutput", "update_state"]


def _acc_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _field_mask(*indices):
    mask = np.zeros([_st.STATE_SIZE], bool)
    mask[list(indices)] = True
    return tf.constant(mask)


def _sanitize_state(s):
    """``sanitize_state`` of ``mel_loss_math.h`` on a float64 ``[STATE_SIZE]`` tensor.

    The one rule for a corrupted incoming state, restated with whole-vector
    masks (see the header for the rule and its reasons).
    """
    zero = tf.zeros_like(s)
    finite = tf.math.is_finite(s)
    is_count = tf.logical_and(
        tf.logical_and(s >= 0.0, s <= _st.MAX_COUNT), tf.equal(tf.math.floor(s), s)
    )
    counters = _field_mask(_st.STEPS, _st.CLEAN_STEPS, _st.NONFINITE_STEPS)
    s = tf.where(tf.logical_and(counters, tf.logical_not(is_count)), zero, s)
    mean_bad = tf.logical_not(finite[_st.RUNNING_MEAN])
    s = tf.where(tf.logical_and(_field_mask(_st.RUNNING_MEAN, _st.CLEAN_STEPS), mean_bad), zero, s)
    last_bad = tf.logical_not(finite[_st.LAST_LOSS])
    s = tf.where(tf.logical_and(_field_mask(_st.LAST_LOSS), last_bad), zero, s)
    count, head, size = s[_st.WINDOW_COUNT], s[_st.RING_HEAD], float(_st.WINDOW_SIZE)
    window_ok = tf.reduce_all(
        tf.stack(
            [
                is_count[_st.WINDOW_COUNT],
                count <= size,
                is_count[_st.RING_HEAD],
                head < size,
                tf.logical_or(tf.equal(count, size), tf.equal(head, count)),
                finite[_st.WINDOW_MEAN],
                tf.logical_not(tf.math.is_nan(s[_st.WINDOW_VARIANCE])),
                tf.reduce_all(finite[_st.RING_START :]),
            ]
        )
    )
    window = _field_mask(
        _st.RING_HEAD,
        _st.WINDOW_COUNT,
        _st.WINDOW_MEAN,
        _st.WINDOW_VARIANCE,
        *range(_st.RING_START, _st.RING_START + _st.WINDOW_SIZE),
    )
    return tf.where(tf.logical_and(window, tf.logical_not(window_ok)), zero, s)


def update_state(state, loss, nonfinite_count, valid_count):
    """New float64 state from ``state`` after a step with the given loss.

    ``loss`` is the loss as returned (already rounded to the output dtype);
    it is widened to float64 here. Mirrors ``update_state`` of
    ``mel_loss_math.h``: the incoming state is sanitised first, and a step
    with a non-finite element or a non-finite loss only moves ``steps`` and
    ``nonfinite_steps``.
    """
    s = tf.convert_to_tensor(state, tf.float64)
    loss = tf.cast(tf.stop_gradient(loss), tf.float64)
    nonfinite_count = tf.cast(nonfinite_count, tf.int64)
    valid_count = tf.cast(valid_count, tf.int64)
    s = _sanitize_state(s)
    f = [s[i] for i in range(_st.STATE_SIZE)]

    one = tf.constant(1.0, tf.float64)
    nonfinite_step = tf.logical_or(nonfinite_count > 0, tf.logical_not(tf.math.is_finite(loss)))
    clean = tf.logical_and(tf.logical_not(nonfinite_step), valid_count > 0)

    steps = f[_st.STEPS] + one
    nonfinite_steps = tf.where(nonfinite_step, f[_st.NONFINITE_STEPS] + one, f[_st.NONFINITE_STEPS])

    k = f[_st.CLEAN_STEPS] + one
    decay = tf.minimum(k / _st.DECAY_RAMP, tf.constant(_st.MAX_DECAY, tf.float64))
    running_mean = decay * f[_st.RUNNING_MEAN] + (one - decay) * loss

    # Sanitised: ring_head an integer in [0, WINDOW_SIZE), window_count one in
    # [0, WINDOW_SIZE].
    head = tf.cast(f[_st.RING_HEAD], tf.int32)
    ring = [
        tf.where(tf.equal(head, i), loss, f[_st.RING_START + i]) for i in range(_st.WINDOW_SIZE)
    ]
    new_head = tf.cast(tf.math.floormod(head + 1, _st.WINDOW_SIZE), tf.float64)
    filled = tf.minimum(f[_st.WINDOW_COUNT] + one, float(_st.WINDOW_SIZE))
    n = tf.cast(filled, tf.int32)
    n_f = tf.cast(n, tf.float64)

    # Sequential sums in slot order, as the C++ loop does.
    total = tf.constant(0.0, tf.float64)
    for i in range(_st.WINDOW_SIZE):
        total = tf.where(i < n, total + ring[i], total)
    mean = total / n_f
    sq = tf.constant(0.0, tf.float64)
    for i in range(_st.WINDOW_SIZE):
        dv = ring[i] - mean
        sq = tf.where(i < n, sq + dv * dv, sq)
    var = tf.where(n >= 2, sq / n_f, tf.constant(0.0, tf.float64))

    def pick(new, old):
        return tf.where(clean, new, old)

    fields = list(f)
    fields[_st.STEPS] = steps
    fields[_st.NONFINITE_STEPS] = nonfinite_steps
    fields[_st.CLEAN_STEPS] = pick(k, f[_st.CLEAN_STEPS])
    fields[_st.RUNNING_MEAN] = pick(running_mean, f[_st.RUNNING_MEAN])
    fields[_st.WINDOW_COUNT] = pick(filled, f[_st.WINDOW_COUNT])
    fields[_st.WINDOW_MEAN] = pick(mean, f[_st.WINDOW_MEAN])
    fields[_st.WINDOW_VARIANCE] = pick(var, f[_st.WINDOW_VARIANCE])
    fields[_st.LAST_LOSS] = pick(loss, f[_st.LAST_LOSS])
    fields[_st.RING_HEAD] = pick(new_head, f[_st.RING_HEAD])
    for i in range(_st.WINDOW_SIZE):
        fields[_st.RING_START + i] = pick(ring[i], f[_st.RING_START + i])
    return tf.stack(fields)


def _check_lengths(lengths, frames):
    """Runtime assertion that 0 <= lengths <= frames, naming index and value."""
    bad = tf.logical_or(lengths < 0, lengths > frames)
    # A sentinel entry keeps argmax/gather well defined for an empty batch.
    padded_bad = tf.concat([tf.cast(bad, tf.int32), tf.zeros([1], tf.int32)], axis=0)
    index = tf.argmax(padded_bad, output_type=tf.int64)
    value = tf.gather(tf.concat([lengths, tf.zeros([1], lengths.dtype)], axis=0), index)
    return tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [
            "Invalid lengths: every entry must be in [0, T]; lengths[",
            index,
            "] =",
            value,
            "with T =",
            frames,
        ],
        summarize=8,
        name="check_lengths",
    )


def masked_mel_loss(
    y_true,
    y_pred,
    lengths=None,
    state=None,
    loss_type="l1",
    huber_delta=1.0,
    normalization="per_sample",
    name=None,
    *,
    return_counts=False,
):
    """Masked mel-spectrogram loss in plain TensorFlow (see module docstring).

    Same signature and outputs as :func:`myxtts_ops.masked_mel_loss`.
    """
    loss_type, huber_delta, normalization = validate_args(loss_type, huber_delta, normalization)
    with tf.name_scope(name or "masked_mel_loss_reference"):
        y_true = tf.convert_to_tensor(y_true)
        y_pred = tf.convert_to_tensor(y_pred)
        lengths = lengths_tensor(lengths)
        if state is not None:
            state = state_tensor(state)
        check_static_shapes(y_true, y_pred, lengths, state)
        y_true, y_pred, lengths, state = ensure_ranks(
            y_true=y_true, y_pred=y_pred, lengths=lengths, state=state
        )

        dtype = y_true.dtype
        acc = _acc_dtype(dtype)
        out_dtype = acc
        shape = tf.shape(y_true, out_type=tf.int64)
        batch, frames, mels = shape[0], shape[1], shape[2]

        checks = []
        wrong_size = None
        if not (y_true.shape.is_fully_defined() and y_pred.shape.is_fully_defined()):
            pred_shape = tf.shape(y_pred, out_type=tf.int64)
            checks.append(
                tf.debugging.assert_equal(
                    shape, pred_shape, message="y_true and y_pred must have the same shape"
                )
            )
            if y_true.shape.rank == y_pred.shape.rank == 3:
                # Under XLA the assertion is gone and shapes of one rank would
                # broadcast into a plausible number: every sample marked bad
                # (NaN, below) instead.
                wrong_size = tf.logical_not(tf.reduce_all(tf.equal(shape, pred_shape)))
        if lengths is None:
            lengths64 = tf.fill([batch], frames)
        else:
            lengths64 = tf.cast(lengths, tf.int64)
            size_checks = []
            if not (lengths.shape.is_fully_defined() and y_true.shape[0] is not None):
                size_checks.append(
                    tf.debugging.assert_equal(
                        tf.shape(lengths, out_type=tf.int64)[0],
                        batch,
                        message="lengths must have shape [batch]",
                    )
                )
                # Under XLA the assertion is gone: lengths of another size
                # would broadcast into a plausible number. Padded or cut to
                # [batch] instead, every sample marked bad (NaN, below).
                wrong_length_size = tf.not_equal(tf.size(lengths64, out_type=tf.int64), batch)
                wrong_size = (
                    wrong_length_size
                    if wrong_size is None
                    else tf.logical_or(wrong_size, wrong_length_size)
                )
                lengths64 = tf.concat([lengths64, tf.zeros([batch], tf.int64)], 0)[:batch]
            with tf.control_dependencies(size_checks):  # the size's message first
                checks += size_checks + [_check_lengths(lengths64, frames)]
        if state is None:
            state = tf.zeros([_st.STATE_SIZE], tf.float64)
        elif not state.shape.is_fully_defined():
            checks.append(
                tf.debugging.assert_equal(
                    tf.size(state, out_type=tf.int64),
                    tf.constant(_st.STATE_SIZE, tf.int64),
                    message=f"state must have shape [{_st.STATE_SIZE}]",
                )
            )
        with tf.control_dependencies(checks):
            # Outside XLA the assertion above has fired first, so nothing here
            # changes a result. Under XLA, where Assert compiles to nothing, a
            # length outside [0, T] is clamped (indices stay in range) and its
            # sample's value and the loss become NaN (below): never a
            # plausible number from a bad length.
            bad_lengths = tf.logical_or(lengths64 < 0, lengths64 > frames)
            if wrong_size is not None:
                bad_lengths = tf.logical_or(bad_lengths, wrong_size)
            lengths64 = tf.clip_by_value(lengths64, tf.zeros_like(frames), frames)

        t = tf.cast(y_true, acc)
        p = tf.cast(y_pred, acc)
        valid = tf.range(frames)[tf.newaxis, :] < lengths64[:, tf.newaxis]  # [B, T]
        valid = tf.broadcast_to(valid[:, :, tf.newaxis], tf.shape(t))

        def element_loss(d):
            ad = tf.abs(d)
            if loss_type == "l1":
                return ad
            # A delta past the accumulation type's range would be inf there,
            # and the unselected branch's gradient inf * 0 = NaN; the largest
            # finite value selects the same branch for every finite |d|.
            delta = tf.constant(min(huber_delta, float(acc.max)), acc)
            half = tf.constant(0.5, acc)
            return tf.where(ad <= delta, half * d * d, delta * (ad - half * delta))

        # element_counts of mel_loss_math.h: an element counts when its loss
        # is finite in the accumulation type (NaN/Inf inputs and overflowing
        # differences alike are excluded and counted).
        finite = tf.math.is_finite(tf.stop_gradient(element_loss(p - t)))
        ok = tf.logical_and(valid, finite)

        zero = tf.zeros([], acc)
        # Double tf.where: elements that do not count are replaced *before*
        # the math so neither the value nor the gradient ever sees NaN/Inf.
        d = tf.where(ok, p - t, zero)
        elem = tf.where(ok, element_loss(d), zero)

        sums = tf.cast(tf.reduce_sum(elem, axis=[1, 2]), tf.float64)  # S_b
        # n_b, counted in int32 where the static shape shows that a sample's
        # T * M elements fit: XLA:CPU reduces int32 faster than int64 (with
        # the non-finite count below, the reference under jit_compile=True
        # runs 1.3x-1.5x faster on the CPU; BENCHMARKS.md).
        fits_int32 = ok.shape[1:].is_fully_defined() and ok.shape[1] * ok.shape[2] < 2**31
        count_dtype = tf.int32 if fits_int32 else tf.int64
        counts = tf.cast(tf.reduce_sum(tf.cast(ok, count_dtype), axis=[1, 2]), tf.int64)
        valid_count = tf.reduce_sum(lengths64) * mels
        if wrong_size is None:
            # Shapes known to agree: every valid element either counts or is
            # non-finite, one reduction over [B, T, M] fewer.
            nonfinite_count = valid_count - tf.reduce_sum(counts)
        else:
            # Sizes unknown when traced: under XLA y_pred may broadcast past
            # y_true (wrong_size), so count the non-finite ones directly.
            nonfinite_count = tf.reduce_sum(
                tf.cast(tf.logical_and(valid, tf.logical_not(finite)), tf.int64)
            )

        active = counts > 0
        active_count = tf.reduce_sum(tf.cast(active, tf.int64))
        counts_f = tf.cast(tf.maximum(counts, 1), tf.float64)
        per_sample64 = tf.where(active, sums / counts_f, tf.zeros_like(sums))
        if normalization == "per_sample":
            n_active = tf.cast(tf.maximum(active_count, 1), tf.float64)
            loss64 = tf.reduce_sum(per_sample64) / n_active
        else:
            total = tf.cast(tf.maximum(tf.reduce_sum(counts), 1), tf.float64)
            loss64 = tf.reduce_sum(sums) / total

        nan = tf.constant(np.nan, tf.float64)
        per_sample64 = tf.where(bad_lengths, nan, per_sample64)
        loss64 = tf.where(tf.reduce_any(bad_lengths), nan, loss64)
        loss = tf.cast(loss64, out_dtype)
        per_sample = tf.cast(per_sample64, out_dtype)
        new_state = update_state(state, loss, nonfinite_count, valid_count)
        out = MaskedMelLossOutput(
            loss=tf.identity(loss, name="loss"),
            per_sample=tf.identity(per_sample, name="per_sample"),
            nonfinite_count=tf.identity(nonfinite_count, name="nonfinite_count"),
            state=tf.identity(new_state, name="state"),
        )
        if not return_counts:
            return out
        return MaskedMelLossCounts(
            *out,
            active_count=tf.identity(active_count, name="active_count"),
            valid_count=tf.identity(valid_count, name="valid_count"),
        )
