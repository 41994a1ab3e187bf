"""The decisions of XTTSLoss as pure functions: (state, observations, settings) -> new state.

Nothing here reads or writes a variable: every function takes tensors (or
Python numbers) and returns tensors, so it runs eagerly, in ``tf.function``
and under ``jit_compile=True``, and is tested directly against NumPy models
(``tests/test_xtts_rule.py``). :mod:`myxtts_loss.state` holds the variables
and :mod:`myxtts_loss.loss` wires the two together.

* :func:`adaptive_weight_step` -- SPEC 4.1, the adaptive mel weight.
* :func:`smoothing_step` -- the reported (never differentiated) smoothed total
  of the MyXTTS contract, section 4, with its step counter advancing on every
  call (contract defect 7 fixed).

Each is defined here in TF ops, with every setting and constant. With
``fused=True`` the same function runs as one C++ op
(``csrc/kernels/adaptive_rule.h``), which receives those settings and
constants as attributes and repeats the operations in the same order and
precision: in a plain graph the TF-ops form is some ninety scalar ops standing
between the mel op's forward and its backward. :func:`rule_op_used` says where XTTSLoss
runs the op.
"""

import tensorflow as tf

__all__ = [
    "EVENTS",
    "OBSERVATIONS",
    "RULE_STATE",
    "SMOOTHING_STATE",
    "SPIKE_MIN_STEPS",
    "SMOOTHING_WINDOW",
    "adaptive_weight_step",
    "all_of",
    "rule_op_used",
    "smoothing_step",
]

#: Spike detection starts when step_count > this (SPEC 4.1: "after 10 steps").
SPIKE_MIN_STEPS = 10
#: Raw totals kept for the smoothed total (contract section 4: 10 slots).
SMOOTHING_WINDOW = 10
_RATIO_EPS = 1e-8
_RATIO_MIN, _RATIO_MAX = 0.1, 10.0
#: The smoothing's running total decays with d = min(step / 500, 0.95) (contract section 4).
_SMOOTHING_DECAY_STEPS, _SMOOTHING_DECAY_MAX = 500.0, 0.95
_SMOOTHING_EPS = 1e-8

#: Fields of the adaptive-rule state: name -> (dtype, initial value; "base" = base weight).
RULE_STATE = {
    "step_count": (tf.int64, 0),
    "current_mel_weight": (tf.float32, "base"),
    "previous_mel_weight": (tf.float32, "base"),
    "last_weight_change_step": (tf.int64, 0),
    "consecutive_stable_steps": (tf.int64, 0),
    "running_total_loss": (tf.float32, 0.0),
    "running_total_initialized": (tf.bool, False),
    "nonfinite_steps": (tf.int64, 0),
    "spike_count": (tf.int64, 0),
    "weight_changes": (tf.int64, 0),
    "rejected_changes": (tf.int64, 0),
}

#: The observations of one call (see :func:`adaptive_weight_step`), in the op's order.
OBSERVATIONS = {
    "mel": tf.float32,
    "other": tf.float32,
    "finite": tf.bool,
    "has_valid": tf.bool,
    "running_mean": tf.float32,
    "window_variance": tf.float32,
    "growing": tf.bool,
}

#: The events of one call, in the op's order (after the weight).
EVENTS = ("clean", "spike", "accepted", "rejected")

#: Fields of the smoothing state.
SMOOTHING_STATE = {
    "total_history": (tf.float32, [0.0] * SMOOTHING_WINDOW),
    "smoothing_running_total": (tf.float32, 0.0),
}


def all_of(conditions):
    """The logical and of ``conditions`` (a non-empty sequence of bool tensors)."""
    conditions = list(conditions)
    out = conditions[0]
    for c in conditions[1:]:
        out = tf.logical_and(out, c)
    return out


def rule_op_used():
    """Whether XTTSLoss runs :func:`adaptive_weight_step` and :func:`smoothing_step`
    as their C++ ops here: outside XLA (inside, XLA compiles the TF ops into
    the step's computation) and where no GPU is visible (the ops have CPU
    kernels only, and on a GPU their inputs would cross to the host on every
    step). The choice is made when the call is traced: a ``tf.function``
    traced outside XLA and then called from a ``jit_compile=True`` function
    holds the ops, which XLA cannot compile; trace the loss inside the
    compiled step (as Keras and the MyXTTS trainer do)."""
    from myxtts_ops.ops import host_kernels_used

    return host_kernels_used()


def adaptive_weight_step(state, obs, settings, enabled, *, fused=False):
    """One call of SPEC 4.1.

    Args:
      state: dict with the fields of :data:`RULE_STATE` (scalar tensors).
      obs: this call's observations, scalar tensors:
        ``mel`` (float32, the mel loss of the whole batch; may be non-finite),
        ``other`` (float32, the weighted sum of the other terms),
        ``finite`` (bool: no term saw a non-finite value),
        ``has_valid`` (bool: the mel term had a valid finite element),
        ``running_mean`` / ``window_variance`` (float32: the op's statistics
        after this call), ``growing`` (bool: gradients are growing).
      settings: an :class:`~myxtts_loss.config.XTTSLossConfig`.
      enabled: bool tensor, the manual on/off switch.
      fused: run the C++ op (``MyxttsOps>AdaptiveWeightStep``, CPU only, not
        under XLA) instead of the TF ops; the same function, bit for bit.

    Returns:
      ``(new_state, weight, events)``: the new state dict, the float32 weight
      for this call's total, and a dict of bool events ``clean``, ``spike``,
      ``accepted``, ``rejected``.
    """
    if fused:
        return _adaptive_weight_step_op(state, obs, settings, enabled)
    c = settings
    i64 = tf.int64
    mel = tf.cast(obs["mel"], tf.float32)
    other = tf.cast(obs["other"], tf.float32)
    window_variance = tf.cast(obs["window_variance"], tf.float32)
    s = state["step_count"] + 1
    w = state["current_mel_weight"]
    rt, rt_init = state["running_total_loss"], state["running_total_initialized"]

    # 1. Clean / spike.
    total_pre = w * mel + other
    finite = tf.logical_and(obs["finite"], tf.math.is_finite(total_pre))
    clean = tf.logical_and(finite, obs["has_valid"])
    # "More than theta x the running total", read as "above it by more than
    # (theta - 1) x its magnitude": theta * rt for rt >= 0 (SPEC 4.1 as
    # written), (2 - theta) * rt below 0, where theta * rt would be under the
    # running total itself and make every step a spike (a negative total:
    # the voice-similarity term reaches -1 / temperature).
    theta = c.max_loss_spike_threshold
    spike_limit = tf.where(rt >= 0.0, theta, 2.0 - theta) * rt
    check_spike = tf.logical_and(s > SPIKE_MIN_STEPS, rt_init)
    spike = all_of([clean, check_spike, total_pre > spike_limit])

    # 2. Gate.
    passed = all_of(
        [
            clean,
            tf.logical_not(spike),
            enabled,
            s >= c.adaptive_weight_min_warmup_steps,
            s - state["last_weight_change_step"] >= c.adaptive_weight_cooling_period,
            window_variance < c.adaptive_weight_variance_threshold,
        ]
    )
    consec = tf.where(passed, state["consecutive_stable_steps"] + 1, tf.constant(0, i64))
    decide = tf.logical_and(passed, consec >= c.adaptive_weight_min_stable_steps)

    # 3.-4. Direction, candidate and its validation, only on deciding steps
    # (a cond: the other steps skip these ops).
    safe_mel = tf.stop_gradient(tf.where(tf.math.is_finite(mel), mel, tf.zeros_like(mel)))
    running_mean = tf.cast(obs["running_mean"], tf.float32)
    growing = obs["growing"]

    def _decide():
        ratio = tf.clip_by_value(
            safe_mel / tf.maximum(tf.abs(running_mean), _RATIO_EPS), _RATIO_MIN, _RATIO_MAX
        )
        up = tf.logical_and(ratio > c.adaptive_weight_loss_high_ratio, tf.logical_not(growing))
        down = tf.logical_or(ratio < c.adaptive_weight_loss_low_ratio, growing)
        direction = tf.where(down, -1.0, tf.where(up, 1.0, 0.0))
        attempt = tf.not_equal(direction, 0.0)
        lo, hi = c.adaptive_weight_min_weight, c.adaptive_weight_max_weight
        factor = 1.0 + tf.constant(c.adaptive_weight_max_change_percent, tf.float32) * direction
        cand = tf.clip_by_value(w * factor, lo, hi)
        weighted = cand * safe_mel
        valid = all_of(
            [
                tf.not_equal(cand, w),
                tf.math.is_finite(cand),
                cand >= lo,
                cand <= hi,
                tf.math.is_finite(weighted),
                weighted <= c.adaptive_weight_max_weighted_loss,
            ]
        )
        accepted = tf.logical_and(attempt, valid)
        return tf.where(accepted, cand, w), accepted, tf.logical_and(attempt, tf.logical_not(valid))

    def _keep():
        return w, tf.constant(False), tf.constant(False)

    new_w, accepted, rejected = tf.cond(decide, _decide, _keep)
    new_w = tf.stop_gradient(new_w)

    # 5. Spike reference: EMA of the returned total over clean steps, a
    # spike's contribution winsorised at the limit while the reference is
    # positive. At or below 0 the limit is too (2 - theta <= 1 x a negative
    # reference), so a capped spike could never lift the reference again and
    # every later positive total would be a spike: there spikes enter whole.
    total = new_w * mel + other
    clipped = tf.where(tf.logical_and(check_spike, rt > 0.0), tf.minimum(total, spike_limit), total)
    a = c.spike_reference_rate
    new_rt = tf.where(clean, tf.where(rt_init, (1.0 - a) * rt + a * clipped, total), rt)

    one = tf.constant(1, i64)
    zero = tf.constant(0, i64)
    new_state = {
        "step_count": s,
        "current_mel_weight": new_w,
        "previous_mel_weight": tf.where(accepted, w, state["previous_mel_weight"]),
        "last_weight_change_step": tf.where(accepted, s, state["last_weight_change_step"]),
        "consecutive_stable_steps": tf.where(accepted, zero, consec),
        "running_total_loss": new_rt,
        "running_total_initialized": tf.logical_or(rt_init, clean),
        "nonfinite_steps": state["nonfinite_steps"] + tf.where(finite, zero, one),
        "spike_count": state["spike_count"] + tf.cast(spike, i64),
        "weight_changes": state["weight_changes"] + tf.cast(accepted, i64),
        "rejected_changes": state["rejected_changes"] + tf.cast(rejected, i64),
    }
    events = {"clean": clean, "spike": spike, "accepted": accepted, "rejected": rejected}
    return new_state, new_w, events


def _adaptive_weight_step_op(state, obs, settings, enabled):
    """:func:`adaptive_weight_step` as one op; every setting and constant from here."""
    from myxtts_ops.ops import adaptive_weight_rule

    c = settings
    theta = c.max_loss_spike_threshold
    a = c.spike_reference_rate
    # Observations are data for the decision, never differentiated through it.
    observations = {
        name: tf.stop_gradient(tf.cast(obs[name], dtype)) for name, dtype in OBSERVATIONS.items()
    }
    out = adaptive_weight_rule(
        {name: state[name] for name in RULE_STATE},
        observations,
        enabled,
        # The TF form's Python numbers, as the float32 / int64 constants it makes of them.
        spike_factor_nonnegative=theta,
        spike_factor_negative=2.0 - theta,
        spike_min_steps=SPIKE_MIN_STEPS,
        min_warmup_steps=int(c.adaptive_weight_min_warmup_steps),
        cooling_period=int(c.adaptive_weight_cooling_period),
        min_stable_steps=int(c.adaptive_weight_min_stable_steps),
        variance_threshold=c.adaptive_weight_variance_threshold,
        ratio_eps=_RATIO_EPS,
        ratio_min=_RATIO_MIN,
        ratio_max=_RATIO_MAX,
        loss_high_ratio=c.adaptive_weight_loss_high_ratio,
        loss_low_ratio=c.adaptive_weight_loss_low_ratio,
        min_weight=c.adaptive_weight_min_weight,
        max_weight=c.adaptive_weight_max_weight,
        max_change_percent=c.adaptive_weight_max_change_percent,
        max_weighted_loss=c.adaptive_weight_max_weighted_loss,
        reference_rate=a,
        reference_keep=1.0 - a,
    )
    new_state = {name: getattr(out, "new_" + name) for name in RULE_STATE}
    events = {name: getattr(out, name) for name in EVENTS}
    return new_state, out.weight, events


def smoothing_step(state, raw_total, step, settings, *, fused=False):
    """The smoothed total of the MyXTTS contract (section 4, "Smoothing").

    Args:
      state: dict with ``total_history`` (float32 [10], slot ``(step - 1) mod 10``
        is written by call ``step``) and ``smoothing_running_total``.
      raw_total: this call's raw total (non-finite counts as 0).
      step: int64, this call's step number (1 for the first call).
      settings: ``loss_smoothing_factor`` (alpha) and ``max_loss_spike_threshold`` (theta).

    Returns ``(new_state, smoothed)``. The history is what the original
    writes, so the values match its eager trajectory whenever its step counter
    advances (adaptation on and a mel term present).

    ``fused``: as for :func:`adaptive_weight_step` (``MyxttsOps>SmoothingStep``,
    the same bits).
    """
    alpha = settings.loss_smoothing_factor
    theta = settings.max_loss_spike_threshold
    if alpha == 0:  # the contract's Python check: no smoothing, no damping, nothing written
        return dict(state), tf.cast(raw_total, tf.float32)
    if fused:
        from myxtts_ops.ops import smoothing_rule

        out = smoothing_rule(
            state["total_history"],
            state["smoothing_running_total"],
            tf.cast(raw_total, tf.float32),
            step,
            alpha=alpha,
            keep=1.0 - alpha,
            theta=theta,
            decay_steps=_SMOOTHING_DECAY_STEPS,
            decay_max=_SMOOTHING_DECAY_MAX,
            eps=_SMOOTHING_EPS,
            damp_after=SPIKE_MIN_STEPS,
        )
        new_state = {
            "total_history": out.new_total_history,
            "smoothing_running_total": out.new_smoothing_running_total,
        }
        return new_state, out.smoothed
    c = tf.cast(raw_total, tf.float32)
    c = tf.where(tf.math.is_finite(c), c, tf.zeros_like(c))
    hist = state["total_history"]
    hist = tf.where(tf.math.is_finite(hist), hist, tf.zeros_like(hist))
    rt = state["smoothing_running_total"]
    rt = tf.where(tf.math.is_finite(rt), rt, tf.zeros_like(rt))
    slot = tf.math.floormod(step - 1, SMOOTHING_WINDOW)
    hist = tf.where(tf.equal(tf.range(SMOOTHING_WINDOW, dtype=tf.int64), slot), c, hist)
    # Divisions by a constant in float64, rounded once to float32: Grappler may
    # turn x / k into x * (1 / k) in a graph, and this way the float32 result
    # is the correctly rounded quotient either way (the op's too).
    n = tf.cast(step, tf.float64)
    d = tf.minimum(tf.cast(n / _SMOOTHING_DECAY_STEPS, tf.float32), _SMOOTHING_DECAY_MAX)
    new_rt = d * rt + (1.0 - d) * c
    new_rt = tf.where(tf.math.is_finite(new_rt), new_rt, c)
    # The mean from a float64 sum: exact while the totals lie within 2**29 of
    # one another, so the order a kernel (or Grappler's rewrite) adds in does
    # not matter, and one bit of the mean can move rho across theta.
    avg = tf.cast(tf.reduce_sum(tf.cast(hist, tf.float64)) / SMOOTHING_WINDOW, tf.float32)
    rho = c / (avg + _SMOOTHING_EPS)
    rho = tf.where(tf.math.is_finite(rho), rho, tf.ones_like(rho))
    damped = c * tf.minimum(theta / rho, 1.0)
    blended = (1.0 - alpha) * c + alpha * new_rt
    out = tf.where(step > SPIKE_MIN_STEPS, tf.where(rho > theta, damped, blended), c)
    out = tf.where(tf.math.is_finite(out), out, c)
    return {"total_history": hist, "smoothing_running_total": new_rt}, out
