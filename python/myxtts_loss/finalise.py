"""Step 4 of an XTTSLoss call: from every term's statistics to its value, the
flags the decision reads, the mel op's state for this call, and (once the
decision has set the mel weight) the differentiable total.

:func:`finalise_terms` in TF ops is the definition. In plain graphs and
eagerly on the CPU the same steps run as two C++ ops
(``MyxttsOps>FinaliseTerms`` before the decision, ``MyxttsOps>CombineTotal``
after it, with ``MyxttsOps>CombineTotalGrad`` as its gradient), which give the
bits of the TF form run op by op (``tests/test_finalise_op.py``): some sixty
scalar TF ops per step become three. The TF form runs wherever
:func:`finalise_op_applies` says no: under XLA (which compiles it), where a
GPU is visible, with several replicas, with ``implementation="reference"``,
for a float64 mel loss, with ``mel_normalization="batch"`` (the
``myxtts_original()`` preset: the op state then follows the term's value, not
the op's own update) and for settings a float32 attribute cannot carry.
"""

import collections
import math

import numpy as np
import tensorflow as tf

__all__ = ["Finalised", "finalise_terms", "finalise_op_applies", "finite_or_zero"]

#: What :func:`finalise_terms` returns. ``values``: ``{term: float32 value}``,
#: 0 where not finite (what is reported); ``mel``: the mel term's value
#: (float32, may be non-finite; 0 without a mel term); ``other``: the sum of
#: the other terms' finite weighted values; ``finite``: no term counted a
#: non-finite value, the mel value is finite and so is every other term's
#: weighted value (the mel term's is checked by ``combine``); ``has_valid``: the mel
#: term had a valid finite element; ``all_bad``: it had valid elements and no
#: finite one; ``new_op_state``: the mel op's state after this call;
#: ``running_mean`` / ``window_variance``: two of its fields as float32;
#: ``combine(weight) -> (total, raw)``: the total to differentiate (in the mel
#: loss's dtype) and the raw total (float32), both 0 where not finite.
Finalised = collections.namedtuple(
    "Finalised",
    [
        "values",
        "mel",
        "other",
        "finite",
        "has_valid",
        "all_bad",
        "new_op_state",
        "running_mean",
        "window_variance",
        "combine",
    ],
)


def finite_or_zero(x):
    """``x`` where finite, 0 elsewhere."""
    return tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _f32_exact(x):
    """Whether the Python number ``x`` is exactly a float32 (what an op attribute holds)."""
    return _number(x) and (math.isnan(x) or float(np.float32(x)) == float(x))


def finalise_op_applies(stats, weights, clips, mel_out, replicas, op_state_is_term, host_ops):
    """Whether :func:`finalise_terms` runs as its ops: the host ops are in use
    (``myxtts_loss.rule.rule_op_used``), one replica, a float32 mel term whose
    op state is the term's own, every statistic float32, every weight a Python
    number (the TF form multiplies by it as a float32 constant, rounded as the
    float32 attribute is) and every clip bound a Python number that a float32
    holds exactly (the TF form compares the float64 value with it)."""
    if not (host_ops and replicas == 1 and mel_out is not None and op_state_is_term):
        return False
    if mel_out.loss.dtype != tf.float32:
        return False
    if any(x.dtype != tf.float32 for s in stats.values() for x in s):
        return False
    for name in stats:
        if name != "mel_loss" and not _number(weights[name]):
            return False
        if clips[name] is not None and not all(_f32_exact(b) for b in clips[name]):
            return False
    return True


def finalise_terms(
    stats,
    weights,
    clips,
    mel_valid,
    mel_out,
    old_state,
    *,
    replicas,
    op_state_is_term,
    update_state,
    fused=False,
):
    """Finalise the terms of one call.

    Args:
      stats: ``{term: TermStats(num, den, nonfinite)}`` in call order (this
        replica's; ``num`` carries the gradient).
      weights: ``{term: weight}`` (the mel term's is not read: the decision sets it).
      clips: ``{term: (lo, hi) or None}``: bounds of the batch value.
      mel_valid: the mel op's valid count (int64), or None without a mel term.
      mel_out: the mel op's outputs, or None.
      old_state: the mel op's state before this call (float64 vector).
      replicas: ``num_replicas_in_sync``: above 1 the statistics are summed
        over the replicas and each returns its share of the total.
      op_state_is_term: whether the mel op's own state update tracks the term's
        value (one replica, the op computing the term's normalisation);
        otherwise ``update_state(old_state, mel, nonfinite, valid)`` does.
      fused: run the ops (see :func:`finalise_op_applies`).

    Returns:
      a :data:`Finalised`.
    """
    if fused:
        return _finalise_op(stats, weights, clips, mel_valid, mel_out, old_state)
    from myxtts_ops import state as op_layout

    f32, f64 = tf.float32, tf.float64
    sg = tf.stop_gradient
    names = list(stats)
    # Reduce: identity on one replica, one all-reduce of them stacked otherwise.
    total_stats = [tf.cast(sg(x), f64) for name in names for x in stats[name]]
    if mel_valid is not None:
        total_stats.append(tf.cast(mel_valid, f64))
    if total_stats and replicas > 1:
        total_stats = tf.unstack(
            tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, tf.stack(total_stats)
            )
        )
    # Global values, and this replica's differentiable share.
    ldt = mel_out.loss.dtype if mel_out is not None else f32
    values, outs = {}, {}
    nonfinite_total = tf.constant(0.0, f64)
    for i, name in enumerate(names):
        num_g, den_g, bad_g = total_stats[3 * i], total_stats[3 * i + 1], total_stats[3 * i + 2]
        value = tf.math.divide_no_nan(num_g, den_g)
        # A term with nothing to count (den 0) adds 0 and no gradient; the
        # denominator is a count, so 0 stays 0 in the term's dtype.
        share = tf.math.divide_no_nan(stats[name].num, tf.cast(den_g, stats[name].num.dtype))
        if clips[name] is not None:
            lo, hi = clips[name]
            inside = tf.logical_and(value >= lo, value <= hi)
            value = tf.clip_by_value(value, lo, hi)
            share = tf.where(inside, share, tf.zeros_like(share))
        dt = ldt if name == "mel_loss" else f32
        value = tf.cast(value, dt)
        share = tf.cast(share, dt)
        values[name] = value
        outs[name] = (
            sg(value) / replicas + (share - sg(share))
            if replicas > 1
            else (value + (share - sg(share)))
        )
        nonfinite_total = nonfinite_total + bad_g

    if mel_out is not None:
        mel = values["mel_loss"]
        base = 3 * names.index("mel_loss")
        nonfinite_mel = tf.cast(total_stats[base + 2], tf.int64)
        valid_mel = tf.cast(total_stats[-1], tf.int64)
        mel32 = tf.cast(mel, f32)
        new_op_state = (
            mel_out.state
            if op_state_is_term
            else update_state(old_state, mel, nonfinite_mel, valid_mel)
        )
        # A loss that overflowed from finite inputs must not enter the statistics.
        mel_finite = tf.math.is_finite(mel32)
        # Otherwise the call counts as a non-finite step: steps and
        # nonfinite_steps + 1, as the kernels' update does for a non-finite
        # loss (one vector add; a scatter costs several times as much).
        bump = np.zeros([op_layout.STATE_SIZE], np.float64)
        bump[[op_layout.STEPS, op_layout.NONFINITE_STEPS]] = 1.0
        bumped = old_state + tf.constant(bump)
        new_op_state = tf.where(mel_finite, new_op_state, bumped)
        has_valid = valid_mel - nonfinite_mel > 0
        all_bad = tf.logical_and(valid_mel > 0, tf.logical_not(has_valid))
    else:
        mel32 = tf.constant(0.0, f32)
        new_op_state = old_state
        has_valid = tf.constant(False)
        all_bad = tf.constant(False)
        mel_finite = tf.constant(True)

    # Contract 3.11-3.12: each weighted term is sanitised on its own. One
    # whose weighted value is not finite in float32 (its reduction or its
    # weight overflowed) adds 0 and no gradient; the others stay, and the
    # step counts as non-finite (finite_all).
    zero_out = tf.constant(0.0, ldt)
    other = tf.constant(0.0, f32)
    other_out = zero_out
    finite_all = tf.logical_and(tf.equal(nonfinite_total, 0.0), mel_finite)
    for name in names:
        if name == "mel_loss":
            continue
        contribution = weights[name] * values[name]
        kept = tf.math.is_finite(contribution)
        other = other + tf.where(kept, contribution, 0.0)
        other_out = other_out + tf.where(kept, tf.cast(weights[name] * outs[name], ldt), zero_out)
        finite_all = tf.logical_and(finite_all, kept)
    if "mel_loss" in values:
        finite_all = tf.logical_and(finite_all, tf.math.is_finite(values["mel_loss"]))

    def combine(weight):
        if mel_out is None:
            return finite_or_zero(other_out), finite_or_zero(other)
        mel_contribution = weight * mel32
        kept = tf.math.is_finite(mel_contribution)
        total = tf.where(kept, tf.cast(weight, ldt) * outs["mel_loss"], zero_out) + other_out
        raw = tf.where(kept, mel_contribution, 0.0) + other
        return finite_or_zero(total), finite_or_zero(raw)

    return Finalised(
        values={name: finite_or_zero(tf.cast(v, f32)) for name, v in values.items()},
        mel=mel32,
        other=other,
        finite=finite_all,
        has_valid=has_valid,
        all_bad=all_bad,
        new_op_state=new_op_state,
        running_mean=tf.cast(new_op_state[op_layout.RUNNING_MEAN], f32),
        window_variance=tf.cast(new_op_state[op_layout.WINDOW_VARIANCE], f32),
        combine=combine,
    )


def _finalise_op(stats, weights, clips, mel_valid, mel_out, old_state):
    from myxtts_ops.ops import combine_total, finalise_terms_op

    names = list(stats)
    mel_index = names.index("mel_loss")
    term_weights = [1.0 if n == "mel_loss" else float(weights[n]) for n in names]
    # FinaliseTerms has no gradient and CombineTotal's reaches num only, so no
    # input needs a stop_gradient.
    nums = [stats[n].num for n in names]
    dens = [stats[n].den for n in names]
    out = finalise_terms_op(
        nums,
        dens,
        [stats[n].nonfinite for n in names],
        mel_valid,
        mel_out.state,
        old_state,
        weights=term_weights,
        clipped=[clips[n] is not None for n in names],
        clip_lo=[float(clips[n][0]) if clips[n] is not None else 0.0 for n in names],
        clip_hi=[float(clips[n][1]) if clips[n] is not None else 0.0 for n in names],
        mel_index=mel_index,
    )

    def combine(weight):
        return combine_total(
            weight,
            out.mel,
            out.other,
            out.mel_out,
            out.other_out,
            nums,
            dens,
            out.kept,
            out.inside,
            weights=term_weights,
            mel_index=mel_index,
        )

    values = tf.unstack(out.values, num=len(names))
    return Finalised(
        values=dict(zip(names, values)),
        mel=out.mel,
        other=out.other,
        finite=out.finite,
        has_valid=out.has_valid,
        all_bad=out.all_bad,
        new_op_state=out.new_op_state,
        running_mean=out.running_mean,
        window_variance=out.window_variance,
        combine=combine,
    )
