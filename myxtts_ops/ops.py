"""Python wrappers of the library's ops and their gradient registrations: the
fused masked mel loss (and its XLA path), the length and size checks, the
fused stop-token loss, and the adaptive-weight rule and smoothing ops."""

import logging

import numpy as np
import tensorflow as tf

from myxtts_ops import _loader
from myxtts_ops.state import STATE_SIZE
from myxtts_ops.types import MaskedMelLossCounts, MaskedMelLossOutput
from myxtts_ops.validation import (
    MAX_LENGTH,
    check_static_shapes,
    in_xla_context,
    lengths_tensor,
    state_tensor,
    validate_args,
)

OP_NAME = "MyxttsOps>MaskedMelLoss"
GRAD_OP_NAME = "MyxttsOps>MaskedMelLossGrad"
CHECK_LENGTHS_OP_NAME = "MyxttsOps>CheckLengths"
CHECK_SIZES_OP_NAME = "MyxttsOps>CheckSizes"
STOP_OP_NAME = "MyxttsOps>StopTokenLoss"
STOP_GRAD_OP_NAME = "MyxttsOps>StopTokenLossGrad"
RULE_OP_NAME = "MyxttsOps>AdaptiveWeightStep"
SMOOTHING_OP_NAME = "MyxttsOps>SmoothingStep"
FINALISE_OP_NAME = "MyxttsOps>FinaliseTerms"
COMBINE_OP_NAME = "MyxttsOps>CombineTotal"
COMBINE_GRAD_OP_NAME = "MyxttsOps>CombineTotalGrad"
ON_XLA_CHOICES = ("fallback", "error")

_log = logging.getLogger("myxtts_ops")
_warned_xla = False


class XlaUnsupportedError(ValueError):
    """The fused op was asked for inside an XLA-compiled function."""


def load_ops():
    """Load and register the op library and its gradient (idempotent, thread-safe).

    Call it before ``tf.saved_model.load`` of a graph that contains the op.
    Returns the loaded op module. (The gradient is registered when this module
    is imported, so the loader does not import this module back.)
    """
    return _loader.load_ops()


def xla_length_check_available():
    """True unless inside an XLA-compiled function whose process cannot run this
    library's custom calls (then :func:`check_lengths` would fail to compile)."""
    return not in_xla_context() or _loader.xla_unavailable_reason() is None


@tf.autograph.experimental.do_not_convert
def length_check_available():
    """True where :func:`check_lengths` can run: its library loads and, inside
    an XLA-compiled function, the process can run the library's custom calls."""
    if in_xla_context():
        return _loader.xla_unavailable_reason() is None
    try:
        _loader.load_ops()
    except _loader.OpLibraryError:
        return False
    return True


@tf.autograph.experimental.do_not_convert
def check_lengths(lengths, name, limit=MAX_LENGTH, note="", bounds=()):
    """``lengths`` (``[B]``, int32, int64 or any float dtype) as int32 once every
    entry is a whole number in ``[0, limit]`` (``limit`` at most ``MAX_LENGTH``;
    int32 lengths pass through unchanged); otherwise an
    ``InvalidArgumentError`` "``name[b] = v is outside [0, limit]``" (or "``...
    is not a whole number in [0, limit]``" for a fraction, NaN or an
    infinity), ``v`` as passed, followed by ``note``. ``bounds``: ``(size,
    note)`` pairs, ``size`` an int32 scalar tensor known only when the graph
    runs (an axis the lengths index, sized ``None`` when traced); the smallest
    size below ``limit`` is the limit, with its note. One op on every path:
    inside ``jit_compile=True`` it is a custom call that XLA keeps, where it
    compiles ``tf.debugging`` assertions away (check
    :func:`xla_length_check_available` there first)."""
    library = _loader.load_ops()
    t = tf.convert_to_tensor(lengths)
    if isinstance(lengths, (list, tuple)) and t.dtype == tf.float32:
        t = tf.convert_to_tensor(lengths, tf.float64)  # Python floats, exactly as given
    bounds = list(bounds)
    return library.myxtts_ops_check_lengths(
        lengths=t,
        bounds=_int32_sizes([size for size, _ in bounds], "bounds"),
        input_name=name,
        note=note,
        limit=limit,
        bound_notes=[n for _, n in bounds],
    )


@tf.autograph.experimental.do_not_convert
def check_sizes(pairs):
    """Refuse axis sizes that must agree but are unknown when a graph is traced.

    ``pairs``: ``(size, expected, label, expected_label)`` tuples, each size an
    integer scalar tensor (``tf.shape(x)[axis]``; of another integer dtype it
    is clipped to ``[-1, 2**31 - 1]``) or a Python int in ``[0, 2**31 - 1]``;
    any other size is a ``ValueError``. Returns the check op (run it before the
    inputs are used: ``tf.control_dependencies``); the first pair that
    differs is an ``InvalidArgumentError`` "``label is size, but
    expected_label is expected``". Under XLA every size is a compile-time
    constant and the check fails the compilation instead (check
    :func:`xla_length_check_available` there first); XLA compiles both
    branches of a ``tf.cond``, so a check in a branch that would not run
    fails it too.
    """
    library = _loader.load_ops()
    pairs = list(pairs)
    return library.myxtts_ops_check_sizes(
        sizes=_int32_sizes([p[0] for p in pairs], "sizes"),
        expected=_int32_sizes([p[1] for p in pairs], "expected sizes"),
        labels=[p[2] for p in pairs],
        expected_labels=[p[3] for p in pairs],
    )


def _int32_sizes(sizes, what):
    """``sizes`` (Python or NumPy integers, or integer scalar tensors) as one int32
    vector for the check ops. A Python int outside ``[0, 2**31 - 1]`` or a size
    that is not an integer is a ``ValueError``; an integer tensor of another
    dtype saturates at ``2**31 - 1`` (and below at -1) instead of wrapping."""
    out = []
    for i, size in enumerate(sizes):
        if isinstance(size, np.ndarray) and size.ndim == 0 and size.dtype.kind in "iu":
            size = size.item()
        if isinstance(size, (int, np.integer)) and not isinstance(size, (bool, np.bool_)):
            if not 0 <= size <= tf.int32.max:
                raise ValueError(f"{what}[{i}] must be in [0, 2**31 - 1], got {size}")
            out.append(tf.constant(int(size), tf.int32))
            continue
        if not (tf.is_tensor(size) and size.dtype.is_integer and size.shape.rank in (None, 0)):
            raise ValueError(
                f"{what}[{i}] must be an integer scalar (a Python int or an integer tensor), "
                f"got {size!r}"
            )
        size = tf.reshape(size, []) if size.shape.rank is None else size
        if size.dtype != tf.int32:
            # Clipped in its own dtype (a cast first could wrap): sizes are >= 0, so
            # a negative one shows as -1.
            low = tf.cast(0 if size.dtype.is_unsigned else -1, size.dtype)
            high = tf.cast(min(tf.int32.max, size.dtype.max), size.dtype)
            size = tf.cast(tf.clip_by_value(size, low, high), tf.int32)
        out.append(size)
    return tf.stack(out) if out else tf.zeros([0], tf.int32)


def _output_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _lengths_or_placeholder(lengths):
    t = lengths_tensor(lengths)
    return (tf.zeros([0], tf.int32), False) if t is None else (t, True)


# No tensor-dependent Python control flow here: AutoGraph would only convert
# (and warn about) the lazy loader's file checks inside a user's tf.function.
@tf.autograph.experimental.do_not_convert
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
    on_xla="fallback",
):
    """Masked mel-spectrogram loss, finiteness checks and running statistics in one op.

    Args:
      y_true, y_pred: ``[B, T, M]`` tensors of one dtype (float16, bfloat16,
        float32 or float64).
      lengths: int32/int64 ``[B]`` valid frames per sample, or None (all T).
      state: float64 ``[STATE_SIZE]`` running statistics, or None (fresh).
      loss_type: ``"l1"`` or ``"huber"``; huber_delta: Huber threshold (finite, at
        least 2**-126, the smallest normal float32).
      normalization: ``"per_sample"`` (mean of per-sample means) or
        ``"global"`` (sum over all valid elements / their count).
      on_xla: inside an XLA-compiled function (``jit_compile=True``) the op runs
        as one XLA custom call forward and one backward. Only where that path
        cannot exist (a build or TensorFlow without it) ``"fallback"`` computes
        the same result with the pure-TF reference (logged once) and
        ``"error"`` raises :class:`XlaUnsupportedError`.

      return_counts: also return ``active_count`` and ``valid_count``
        (:data:`~myxtts_ops.types.MaskedMelLossCounts`).

    Returns:
      ``MaskedMelLossOutput(loss, per_sample, nonfinite_count, state)``, or
      ``MaskedMelLossCounts`` with ``return_counts=True``.
    """
    loss_type, huber_delta, normalization = validate_args(loss_type, huber_delta, normalization)
    if on_xla not in ON_XLA_CHOICES:
        raise ValueError(f"on_xla must be one of {ON_XLA_CHOICES}, got on_xla={on_xla!r}")
    if in_xla_context():
        reason = _loader.xla_unavailable_reason()
        if reason is not None:
            call = dict(
                lengths=lengths,
                state=state,
                loss_type=loss_type,
                huber_delta=huber_delta,
                normalization=normalization,
                name=name,
                return_counts=return_counts,
            )
            return _xla_fallback(y_true, y_pred, call, on_xla, reason)

    library = _loader.load_ops()
    with tf.name_scope(name or "masked_mel_loss"):
        y_true = tf.convert_to_tensor(y_true, name="y_true")
        y_pred = tf.convert_to_tensor(y_pred, name="y_pred")
        lengths_t, use_lengths = _lengths_or_placeholder(lengths)
        state_t = tf.zeros([STATE_SIZE], tf.float64) if state is None else state_tensor(state)
        check_static_shapes(y_true, y_pred, lengths_t if use_lengths else None, state_t)
        loss, per_sample, nonfinite, new_state, _, active, valid = (
            library.myxtts_ops_masked_mel_loss(
                y_true=y_true,
                y_pred=y_pred,
                lengths=lengths_t,
                state=state_t,
                huber_delta=tf.constant(huber_delta, tf.float64),
                Tout=_output_dtype(y_true.dtype),
                loss_type=loss_type,
                normalization=normalization,
                use_lengths=use_lengths,
            )
        )
        if return_counts:
            return MaskedMelLossCounts(loss, per_sample, nonfinite, new_state, active, valid)
        return MaskedMelLossOutput(loss, per_sample, nonfinite, new_state)


def _xla_fallback(y_true, y_pred, call, on_xla, reason):
    """The reference with ``call`` (the wrapper's other arguments), or the error."""
    global _warned_xla
    if on_xla == "error":
        raise XlaUnsupportedError(
            "myxtts_ops.masked_mel_loss was called inside an XLA-compiled function "
            f"(jit_compile=True), where the fused op cannot run here: {reason}. Compile the "
            "step without XLA (tf.function(jit_compile=False), or model.compile("
            "jit_compile=False) in Keras, which enables XLA by default on GPU), rebuild "
            "myxtts-ops against a TensorFlow with the XLA headers, or pass "
            "on_xla='fallback' to use the pure-TF reference there."
        )
    if not _warned_xla:
        _warned_xla = True
        _log.warning(
            "myxtts_ops.masked_mel_loss inside an XLA-compiled function: using the pure-TF "
            "reference (same results, not fused) because %s. Use jit_compile=False for the "
            "fused op.",
            reason,
        )
    from myxtts_ops import reference

    return reference.masked_mel_loss(y_true, y_pred, **call)


@tf.RegisterGradient(OP_NAME)
def _masked_mel_loss_grad(op, grad_loss, grad_per_sample, *unused_grads):
    """Fused backward: one op writes the gradients of y_true and y_pred."""
    if grad_loss is None:
        grad_loss = tf.zeros_like(op.outputs[0])
    if grad_per_sample is None:
        grad_per_sample = tf.zeros_like(op.outputs[1])
    library = _loader.load_ops()
    # A tape knows which inputs need no gradient (e.g. y_true in Keras fit);
    # under XLA that is the only way the backward learns it may skip d/dy_true.
    skipped = getattr(op, "skip_input_indices", None) or ()
    grad_y_true_wanted = 0 not in skipped
    grad_true, grad_pred = library.myxtts_ops_masked_mel_loss_grad(
        y_true=op.inputs[0],
        y_pred=op.inputs[1],
        lengths=op.inputs[2],
        sample_weights=op.outputs[4],
        grad_loss=grad_loss,
        grad_per_sample=grad_per_sample,
        huber_delta=op.inputs[4],
        loss_type=op.get_attr("loss_type"),
        use_lengths=op.get_attr("use_lengths"),
        grad_y_true_wanted=grad_y_true_wanted,
    )
    return [grad_true if grad_y_true_wanted else None, grad_pred, None, None, None]


class HigherOrderGradientError(NotImplementedError):
    """A second-order or forward-mode gradient of the fused op was asked for."""


@tf.RegisterGradient(GRAD_OP_NAME)
def _masked_mel_loss_grad_grad(op, *unused_grads):
    """The fused backward has no gradient of its own: say so instead of the
    registry's LookupError. (Second-order and forward-mode autodiff,
    tf.autodiff.ForwardAccumulator included, both differentiate it.)"""
    raise HigherOrderGradientError(
        "myxtts_ops.masked_mel_loss supports first-order (reverse-mode) gradients only: "
        "second-order gradients and forward-mode (tf.autodiff.ForwardAccumulator) "
        "differentiate its fused backward op, which has no gradient. Use "
        "myxtts_ops.reference.masked_mel_loss (plain TF ops, differentiable to any order) "
        "where these are needed."
    )


@tf.autograph.experimental.do_not_convert
def stop_token_bce(target, pred, lengths, positive_weight, label_smoothing, prob_min):
    """The weighted BCE of stop probabilities, summed per sample, in one fused op.

    ``target`` and ``pred`` are float32 ``[B, T]``, ``lengths`` int32 ``[B]``
    with every entry in ``[0, T]`` (else an ``InvalidArgumentError`` naming
    the entry). The element loss is ``-(w y log pc + (1 - y) log(1 - pc))``
    with ``y = target (1 - s) + s / 2`` and ``pc = clip(pred, prob_min,
    1 - prob_min)`` (``w`` = ``positive_weight``, ``s`` = ``label_smoothing``).
    ``positive_weight`` and ``label_smoothing`` must be finite and
    ``prob_min`` in ``[2**-24, 0.5)`` (2**-24 is the float32 spacing below 1,
    so the upper clip bound ``1 - prob_min`` stays below 1), else an
    ``InvalidArgumentError`` naming the value.
    Returns ``(sums, counts, nonfinite_count)``: per sample, the sum of the
    element loss over positions ``t < lengths[b]`` whose target and
    prediction are finite (float32 ``[B]``) and their number (int32 ``[B]``);
    the positions before the lengths that are not counted (int64 scalar).
    Differentiable in ``target`` and ``pred`` through ``sums`` (one fused
    backward op; first order only). Outside XLA only: inside
    ``jit_compile=True`` XLA fuses the same formula in TF ops by itself
    (``myxtts_loss.terms``).
    """
    # A tensor first: an eager call would convert an int64 array to the op's
    # int32 by wrapping it, before the op could refuse a length out of range.
    lengths = tf.convert_to_tensor(lengths)
    if lengths.dtype != tf.int32:
        raise TypeError(f"stop lengths must be int32, got {lengths.dtype.name}")
    library = _loader.load_ops()
    return library.myxtts_ops_stop_token_loss(
        target=target,
        pred=pred,
        lengths=lengths,
        positive_weight=float(positive_weight),
        label_smoothing=float(label_smoothing),
        prob_min=float(prob_min),
    )


@tf.RegisterGradient(STOP_OP_NAME)
def _stop_token_bce_grad(op, grad_sums, *unused_grads):
    """Fused backward: one op writes the gradients of the target and the prediction."""
    if grad_sums is None:
        grad_sums = tf.zeros_like(op.outputs[0])
    library = _loader.load_ops()
    grad_target, grad_pred = library.myxtts_ops_stop_token_loss_grad(
        target=op.inputs[0],
        pred=op.inputs[1],
        lengths=op.inputs[2],
        grad_sums=grad_sums,
        positive_weight=op.get_attr("positive_weight"),
        label_smoothing=op.get_attr("label_smoothing"),
        prob_min=op.get_attr("prob_min"),
    )
    return [grad_target, grad_pred, None]


@tf.RegisterGradient(STOP_GRAD_OP_NAME)
def _stop_token_bce_grad_grad(op, *unused_grads):
    """As :func:`_masked_mel_loss_grad_grad`, for the stop-token op."""
    raise HigherOrderGradientError(
        "myxtts_ops.ops.stop_token_bce supports first-order (reverse-mode) gradients only; "
        "the stop term computed in TF ops (under jit_compile=True) is differentiable to any "
        "order."
    )


# The decision ops' outputs are state and events, never differentiated.
tf.no_gradient(RULE_OP_NAME)
tf.no_gradient(SMOOTHING_OP_NAME)


@tf.autograph.experimental.do_not_convert
def adaptive_weight_rule(state, observations, enabled, **settings):
    """One call of the adaptive mel weight rule as one CPU op (``MyxttsOps>AdaptiveWeightStep``).

    ``state`` and ``observations`` are dicts of scalar tensors named as the
    op's inputs, ``enabled`` a bool scalar, ``settings`` the op's attributes.
    Returns the op's outputs (``new_<field>`` for each state field, ``weight``,
    ``clean``, ``spike``, ``accepted``, ``rejected``). XTTSLoss calls it
    through :func:`myxtts_loss.rule.adaptive_weight_step` (``fused=True``),
    which defines the rule and sets every attribute.
    """
    library = _loader.load_ops()
    return library.myxtts_ops_adaptive_weight_step(
        **state, **observations, enabled=enabled, **settings
    )


@tf.autograph.experimental.do_not_convert
def smoothing_rule(total_history, running_total, raw_total, step, **settings):
    """One call of the reported smoothed total as one CPU op (``MyxttsOps>SmoothingStep``);
    :func:`myxtts_loss.rule.smoothing_step` (``fused=True``) defines it and sets
    every attribute. Returns ``(new_total_history, new_smoothing_running_total,
    smoothed)``."""
    library = _loader.load_ops()
    return library.myxtts_ops_smoothing_step(
        total_history=total_history,
        smoothing_running_total=running_total,
        raw_total=raw_total,
        step=step,
        **settings,
    )


# FinaliseTerms' outputs are values and flags, with no gradient in the TF
# form either: the total's gradient reaches the terms' nums through CombineTotal.
tf.no_gradient(FINALISE_OP_NAME)


@tf.autograph.experimental.do_not_convert
def finalise_terms_op(num, den, nonfinite, mel_valid, mel_state, old_state, **settings):
    """XTTSLoss's finalisation on one replica as one CPU op (``MyxttsOps>FinaliseTerms``).

    ``num``, ``den``, ``nonfinite``: lists of float32 scalars, one per term;
    ``mel_valid``: the mel op's valid count; ``mel_state``, ``old_state``: the
    mel op's new and old state; ``settings``: the op's attributes. Returns the
    op's outputs. :func:`myxtts_loss.finalise.finalise_terms` (``fused=True``)
    defines it and sets every attribute."""
    library = _loader.load_ops()
    return library.myxtts_ops_finalise_terms(
        num=num,
        den=den,
        nonfinite=nonfinite,
        mel_valid=mel_valid,
        mel_state=mel_state,
        old_state=old_state,
        **settings,
    )


@tf.autograph.experimental.do_not_convert
def combine_total(weight, mel, other, mel_out, other_out, num, den, kept, inside, **settings):
    """The total and raw total from :func:`finalise_terms_op`'s outputs and the
    mel weight, as one CPU op (``MyxttsOps>CombineTotal``); the total's gradient
    reaches every ``num`` (``MyxttsOps>CombineTotalGrad``). Returns ``(total, raw)``."""
    library = _loader.load_ops()
    out = library.myxtts_ops_combine_total(
        weight=weight,
        mel=mel,
        other=other,
        mel_out=mel_out,
        other_out=other_out,
        num=num,
        den=den,
        kept=kept,
        inside=inside,
        **settings,
    )
    return out.total, out.raw


@tf.RegisterGradient(COMBINE_OP_NAME)
def _combine_total_grad(op, grad_total, unused_grad_raw):
    """d total / d num for every term, as one op; nothing else is differentiated."""
    n = op.get_attr("N")
    if grad_total is None:
        return [None] * len(op.inputs)
    library = _loader.load_ops()
    inputs = list(op.inputs)
    grad_num = library.myxtts_ops_combine_total_grad(
        grad_total=grad_total,
        weight=inputs[0],
        mel=inputs[1],
        mel_out=inputs[3],
        other_out=inputs[4],
        den=inputs[5 + n : 5 + 2 * n],
        kept=inputs[5 + 2 * n],
        inside=inputs[6 + 2 * n],
        weights=op.get_attr("weights"),
        mel_index=op.get_attr("mel_index"),
    )
    return [None] * 5 + list(grad_num) + [None] * (n + 2)


@tf.RegisterGradient(COMBINE_GRAD_OP_NAME)
def _combine_total_grad_grad(op, *grads_of_grad_num):
    """Second-order and forward-mode autodiff differentiate the gradient op.
    Each grad_num[i] is grad_total through the gates, the term's weight and
    1 / den, so its gradient with respect to grad_total is the TF form's
    gradient of those steps, in TF ops (built only when asked for): each
    upstream value over den, selected by the clip, times the weight,
    selected by the term's and then the total's finiteness gate. The other
    inputs are flags, counts and the decision's weight, which the TF form
    does not differentiate either."""
    inputs = list(op.inputs)
    if all(g is None for g in grads_of_grad_num):
        return [None] * len(inputs)
    n = op.get_attr("N")
    weights = op.get_attr("weights")
    mel_index = op.get_attr("mel_index")
    weight, mel, mel_out, other_out = inputs[1:5]
    den = inputs[5 : 5 + n]
    kept = tf.unstack(inputs[5 + n], num=n)
    inside = tf.unstack(inputs[6 + n], num=n)
    mel_kept = tf.math.is_finite(weight * mel)
    zero = tf.zeros_like(weight)
    total = tf.where(mel_kept, weight * mel_out, zero) + other_out
    parts = []
    for i, upstream in enumerate(grads_of_grad_num):
        if upstream is None:
            continue
        g_share = tf.where(inside[i], tf.math.divide_no_nan(upstream, den[i]), zero)
        factor = weight if i == mel_index else tf.constant(weights[i], tf.float32)
        parts.append(tf.where(mel_kept if i == mel_index else kept[i], g_share * factor, zero))
    grad_total = tf.where(tf.math.is_finite(total), tf.add_n(parts), zero)
    return [grad_total] + [None] * (len(inputs) - 1)


def host_kernels_used():
    """Whether ops that run on the CPU only here are used: outside XLA (which
    compiles their TF-ops form instead) and where no GPU is visible. The rule
    ops have CPU kernels only; the stop-token op's TensorFlow GPU kernel has
    not run inside TensorFlow on a GPU yet (``myxtts_loss.terms.fused_stop_op_used``)."""
    return not in_xla_context() and not tf.config.list_logical_devices("GPU")
