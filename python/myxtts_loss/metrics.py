"""What XTTSLoss reports: snapshots of its state as new dicts of float32 scalar tensors.

Every value is a fresh tensor (never a live variable), so it formats with
``f"{v:.4f}"``, ``float(v)`` works, and the dicts can be mutated by the caller
(MyXTTS's trainer adds its own keys) without touching the loss.
"""

import tensorflow as tf

from myxtts_loss import gradient_norm, rule, terms

__all__ = ["latest_terms", "weighted_terms", "stability_metrics", "adaptive_metrics"]

_F32 = tf.float32


def _snap(x):
    return tf.cast(tf.identity(x), _F32)


def _listed_terms(loss_fn):
    """Registry names to list: the latest call's active terms; inside a graph,
    those of the latest call traced in that graph (every term, as zeros where
    inactive, in a graph that has not called the loss)."""
    st = loss_fn._state
    if tf.executing_eagerly():
        if not bool(st.has_called.numpy()):
            return None
        active = st.last_active.numpy()
        names = [n for n, a in zip(terms.TERM_NAMES, active) if a]
    else:
        traced = loss_fn._active_in_graph.get(tf.compat.v1.get_default_graph())
        names = list(terms.TERM_NAMES if traced is None else traced)
    if "gradient_participation_loss" not in names:
        names.append("gradient_participation_loss")
    return names


def latest_terms(loss_fn):
    """``{term: unweighted value}`` of the latest call ({} before the first call)."""
    names = _listed_terms(loss_fn)
    if names is None:
        return {}
    values = loss_fn._state.last_terms.read_value()
    out = {n: _snap(values[terms.TERM_NAMES.index(n)]) for n in names}
    for name, var in loss_fn._state.extra_losses.items():
        out[name] = _snap(var.read_value())
    return out


def weighted_terms(loss_fn):
    """``mel_loss`` (weighted), ``mel_weight``, weighted active terms,
    ``gradient_participation_loss``, ``raw_total_loss`` (contract section 5 order)."""
    names = _listed_terms(loss_fn)
    if names is None:
        return {}
    st = loss_fn._state
    c = loss_fn.config
    values = st.last_terms.read_value()
    w = st.last_mel_weight.read_value()
    out = {}
    if "mel_loss" in names:
        out["mel_loss"] = _snap(w * values[terms.TERM_NAMES.index("mel_loss")])
        out["mel_weight"] = _snap(w)
    for term in terms.TERMS:
        if term.name in ("mel_loss", "gradient_participation_loss") or term.name not in names:
            continue
        out[term.name] = _snap(getattr(c, term.weight) * values[terms.TERM_NAMES.index(term.name)])
    for name, var in st.extra_losses.items():
        out[name] = _snap(loss_fn._extra_weights[name] * var.read_value())
    out["gradient_participation_loss"] = _snap(
        values[terms.TERM_NAMES.index("gradient_participation_loss")]
    )
    out["raw_total_loss"] = _snap(st.last_raw_total.read_value())
    return out


def stability_metrics(loss_fn):
    """The stability metrics of the MyXTTS contract (section 5) and SPEC 4.2,
    plus what the adaptive rule reads.

    ``running_total_loss``, ``loss_variance`` and ``loss_stability_score`` are
    the contract's: the smoothing's running total, the population variance of
    its history of raw totals (0 while ``step_count`` <= 10) and
    ``exp(-loss_variance)``, defined whatever terms are active (the
    original's were dead without a mel term: defect 7). The rule's own
    quantities are ``spike_reference_total`` (SPEC 4.1's running total) and
    ``mel_window_variance`` (the op's window variance, which gates changes).
    """
    import myxtts_ops.state as layout

    st = loss_fn._state
    op_state = st.op_state.read_value()
    step = st.step_count.read_value()
    history_variance = tf.math.reduce_variance(st.total_history.read_value())
    variance = _snap(
        tf.where(step > rule.SPIKE_MIN_STEPS, history_variance, tf.zeros_like(history_variance))
    )
    out = {
        "running_mel_loss": _snap(op_state[layout.RUNNING_MEAN]),
        "running_total_loss": _snap(st.smoothing_running_total.read_value()),
        "loss_variance": variance,
        "loss_stability_score": tf.exp(-variance),
        "step_count": _snap(step),
        "nonfinite_steps": _snap(st.nonfinite_steps.read_value()),
        "spike_count": _snap(st.spike_count.read_value()),
        "smoothed_total_loss": _snap(st.last_smoothed_total.read_value()),
        "all_nonfinite_mel_steps": _snap(st.all_nonfinite_mel_steps.read_value()),
        "spike_reference_total": _snap(st.running_total_loss.read_value()),
        "mel_window_variance": _snap(op_state[layout.WINDOW_VARIANCE]),
    }
    if tf.executing_eagerly():
        loss_fn._warn_all_nonfinite(int(st.all_nonfinite_mel_steps.numpy()))
    return out


def adaptive_metrics(loss_fn):
    """SPEC 4.2 adaptive-weight metrics."""
    st = loss_fn._state
    hist = loss_fn.gradient_norm_history()
    recent = hist[-gradient_norm.GRADIENT_NORM_HISTORY :]
    avg = tf.math.divide_no_nan(tf.reduce_sum(recent), tf.cast(tf.size(recent), _F32))
    step = st.step_count.read_value()
    return {
        "current_mel_weight": _snap(st.current_mel_weight.read_value()),
        "previous_mel_weight": _snap(st.previous_mel_weight.read_value()),
        "base_mel_weight": tf.constant(float(loss_fn.config.mel_loss_weight), _F32),
        "steps_since_weight_change": _snap(step - st.last_weight_change_step.read_value()),
        "consecutive_stable_steps": _snap(st.consecutive_stable_steps.read_value()),
        "weight_adjustment_enabled": _snap(tf.cast(st.adaptation_enabled.read_value(), _F32)),
        "avg_gradient_norm": avg,
        "weight_changes": _snap(st.weight_changes.read_value()),
        "rejected_changes": _snap(st.rejected_changes.read_value()),
    }
