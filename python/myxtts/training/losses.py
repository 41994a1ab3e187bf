"""XTTSLoss: masked mel loss (fused op) + stop-token BCE with a stable adaptive mel weight.

Everything the loss decides happens in TensorFlow ops on ``tf.Variable`` state,
so one object works eagerly, inside ``tf.function`` (one trace for a fixed
input signature), under ``jit_compile=True``, in ``model.fit`` and in custom
``tf.GradientTape`` loops, and is saved by ``tf.train.Checkpoint``.
"""

import collections.abc
import math

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.trackable.autotrackable import AutoTrackable

from myxtts.config import IMPLEMENTATIONS, XTTSLossConfig

__all__ = ["XTTSLoss", "GRADIENT_NORM_HISTORY"]

#: How many previous gradient norms the "growing gradients" test compares the
#: newest one with (SPEC 4.1: "the mean of the previous (up to 10) observed norms").
GRADIENT_NORM_HISTORY = 10
_GRAD_RING = GRADIENT_NORM_HISTORY + 1  # newest + up to 10 previous
#: Spike detection starts when step_count > this (SPEC 4.1: "after 10 steps").
SPIKE_MIN_STEPS = 10
_RATIO_EPS = 1e-8
_RATIO_MIN, _RATIO_MAX = 0.1, 10.0

_SEED_ARGS = (
    "mel_loss_weight",
    "use_adaptive_weights",
    "loss_smoothing_factor",
    "max_loss_spike_threshold",
    "gradient_norm_threshold",
)


def _variable(value, dtype, name):
    """A non-trainable state variable that stays identical on every replica.

    ``ON_WRITE`` + ``ONLY_FIRST_REPLICA``: under ``tf.distribute`` the value
    assigned in replica context by the first replica is written to all copies.
    """
    with tf.init_scope():
        return tf.Variable(
            tf.constant(value, dtype=dtype),
            trainable=False,
            name=name,
            dtype=dtype,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )


class _XTTSLossState(tf.Module):
    """All mutable state of one XTTSLoss (every attribute is a tf.Variable)."""

    # (name, dtype, initial value or callable(config) -> value)
    SPEC = (
        ("op_state", tf.float64, None),  # filled in __init__ (needs STATE_SIZE)
        ("step_count", tf.int64, 0),
        ("current_mel_weight", tf.float32, "base"),
        ("previous_mel_weight", tf.float32, "base"),
        ("last_weight_change_step", tf.int64, 0),
        ("consecutive_stable_steps", tf.int64, 0),
        ("running_total_loss", tf.float32, 0.0),
        ("running_total_initialized", tf.bool, False),
        ("gradient_norms", tf.float32, None),  # ring buffer
        ("gradient_norm_count", tf.int64, 0),
        ("nonfinite_gradient_norms", tf.int64, 0),
        ("nonfinite_steps", tf.int64, 0),
        ("spike_count", tf.int64, 0),
        ("weight_changes", tf.int64, 0),
        ("rejected_changes", tf.int64, 0),
        ("last_mel_loss", tf.float32, 0.0),
        ("last_stop_loss", tf.float32, 0.0),
        ("last_total_loss", tf.float32, 0.0),
        ("last_mel_weight", tf.float32, "base"),
    )

    def __init__(self, base_weight, state_size, enabled):
        super().__init__(name="xtts_loss_state")
        self._initial = {}
        for name, dtype, init in self.SPEC:
            if name == "op_state":
                value = np.zeros([state_size], np.float64)
            elif name == "gradient_norms":
                value = np.zeros([_GRAD_RING], np.float32)
            elif init == "base":
                value = base_weight
            else:
                value = init
            self._initial[name] = (value, dtype)
            setattr(self, name, _variable(value, dtype, name))
        self.adaptation_enabled = _variable(bool(enabled), tf.bool, "adaptation_enabled")
        self.extra_losses = {}

    def add_extra(self, name):
        var = _variable(0.0, tf.float32, f"last_{name}")
        self.extra_losses[name] = var
        return var

    def reset(self):
        """Every variable back to its initial value (the enabled switch excepted)."""
        for name, (value, dtype) in self._initial.items():
            getattr(self, name).assign(tf.constant(value, dtype))
        for var in self.extra_losses.values():
            var.assign(0.0)


def _finite_or_zero(x):
    return tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))


def _combine(conditions, pairwise, reduce):
    """One boolean from scalar conditions with as few ops as possible: none
    for one, a single pairwise op for two, Pack + reduce for more."""
    conditions = list(conditions)
    if len(conditions) == 1:
        return conditions[0]
    if len(conditions) == 2:
        return pairwise(conditions[0], conditions[1])
    return reduce(tf.stack(conditions))


def _all_of(conditions):
    return _combine(conditions, tf.logical_and, tf.reduce_all)


def _any_of(conditions):
    return _combine(conditions, tf.logical_or, tf.reduce_any)


@keras.saving.register_keras_serializable(package="myxtts")
class XTTSLoss(keras.losses.Loss, AutoTrackable):
    """MyXTTS training loss with the stable adaptive mel weight (SPEC 4).

    ``total = w_mel * mel + w_stop * stop (+ w_i * term_i for registered terms)``
    where ``mel`` is the masked mel-spectrogram loss computed by the fused op
    (``myxtts_ops.masked_mel_loss``), ``stop`` the masked stop-token binary
    cross-entropy, and ``w_mel`` the adaptive mel weight. The returned value is
    that raw total (what gets differentiated).

    Inputs (``loss_fn(y_true, y_pred)``):

    * dicts as MyXTTS uses them: ``y_true["mel_target"]`` ``[B, T, M]``,
      ``y_true["mel_lengths"]`` ``[B]`` (optional: all frames valid),
      ``y_pred["mel_output"]`` ``[B, T, M]``, and optionally
      ``y_true["stop_target"]`` / ``y_pred["stop_tokens"]`` ``[B, T]`` or
      ``[B, T, 1]`` (the stop term is used when both are present; masked by
      the same lengths; ``stop_tokens`` are logits unless
      ``stop_from_logits=False``);
    * or plain mel tensors ``loss_fn(mel_target, mel_output, mel_lengths=...)``
      (all frames when no lengths are given).

    Mel tensors reach the op in their own dtype (float16/bfloat16 included, no
    cast). If ``mel_target`` and ``mel_output`` differ in dtype, the target is
    cast to the prediction's dtype.

    **Settings**: the seed arguments (``mel_loss_weight=2.5``,
    ``use_adaptive_weights=True``, ``loss_smoothing_factor=0.1``,
    ``max_loss_spike_threshold=2.0``, ``gradient_norm_threshold=5.0``), any
    other field of :class:`myxtts.config.XTTSLossConfig` as a keyword
    (``stop_loss_weight``, ``adaptive_weight_cooling_period``, ...), and/or
    ``config=XTTSLossConfig(...)`` (keywords given explicitly override it).
    Invalid values raise ``ValueError`` naming the setting; with adaptation on,
    a ``mel_loss_weight`` outside ``[adaptive_weight_min_weight,
    adaptive_weight_max_weight]`` is a ``ValueError``.

    Other arguments: ``extra_losses={"name": fn or (fn, weight)}`` adds terms
    ``fn(y_true, y_pred) -> scalar`` with fixed weights (also
    :meth:`add_loss_term`, before the first call); ``implementation="fused"``
    (the C++ op; falls back to the pure-TF reference under XLA by itself) or
    ``"reference"`` (``myxtts_ops.reference``); ``verbose=True`` prints (with
    ``tf.print``) only on steps where the weight actually changes.

    **Decision logic** (SPEC 4.1), per call, with ``s`` = step_count after +1:
    a step that is not clean (non-finite mel/stop/term values, or no valid mel
    frame) or whose total exceeds ``max_loss_spike_threshold`` x the running
    total (checked when ``s > 10``) is unstable: no change and the
    consecutive-stable counter resets. Otherwise the gate (enabled, warmup,
    cooling, window variance) increments or resets that counter; at
    ``min_stable_steps`` the direction is chosen from the loss ratio (mel loss
    / op running mean) and the gradient-norm history, a +-``max_change_percent``
    candidate is validated and either applied or counted as rejected. A
    direction of 0 is neither a change nor a rejection; a candidate clipped back
    onto the current weight at a bound is a rejection.

    *Running total* (spike reference): exponential moving average of the
    returned total over clean steps, ``rt = (1 - a) rt + a x`` with
    ``a = loss_smoothing_factor``, started at the first clean total. A spike's
    contribution is winsorised to ``max_loss_spike_threshold x rt`` so that one
    50x spike does not blind the detector, while a genuine level shift is still
    followed (by up to ``1 + a (threshold - 1)`` per step).

    *Gradient norms*: feed them with :meth:`observe_gradient_norm` after the
    step's gradients are known (they then inform the next call). Non-finite
    norms are ignored (counted). In ``model.fit`` use
    :func:`myxtts.training.gradient_norm.feed_gradient_norm` or
    :class:`myxtts.training.XTTSModel`, which do it for you.

    **Keras**: ``model.compile(loss=XTTSLoss())`` works for single-output
    models whose output is the mel tensor (plain style). Keras maps a loss onto
    each output of a dict-output model separately, so for MyXTTS dict outputs
    (and to pass ``training=False`` during ``evaluate``) build the model with
    :class:`myxtts.training.XTTSModel` (or mix
    :class:`myxtts.training.XTTSModelMixin` into your ``keras.Model``
    subclass): its ``compute_loss`` hands the whole ``y`` and ``y_pred`` dicts
    to this loss, and its ``compile`` feeds gradient norms automatically.
    ``sample_weight`` is not supported (``ValueError``).

    Calls with ``training=False`` (a Python bool) compute the total with the current weight and
    change no state (use for validation).

    All state lives in non-trainable ``tf.Variable``s (``step_count`` is one:
    ``loss_fn.step_count.numpy()``), created once in the constructor, and
    ``tf.train.Checkpoint(loss=loss_fn)`` saves and restores all of it
    (resuming gives exactly the trajectory of a run that never stopped). For
    ``model.fit`` with ``keras.callbacks.BackupAndRestore`` (which saves only
    the model and optimizer) add
    :class:`myxtts.training.callbacks.XTTSLossBackup`.

    **tf.distribute** (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``):
    construct the loss (and the model/optimizer) inside ``strategy.scope()``::

        with strategy.scope():
            model = build_model()
            loss_fn = XTTSLoss(...)
            optimizer = keras.optimizers.Adam()

        @tf.function
        def train_step(x, y):                    # custom loop
            def replica_fn(x, y):                # x, y: this replica's shard
                with tf.GradientTape() as tape:
                    loss = loss_fn(y, model(x, training=True))
                grads = tape.gradient(loss, model.trainable_variables)
                loss_fn.observe_gradient_norm(grads)   # list: global norm
                optimizer.apply_gradients(zip(grads, model.trainable_variables))
                return loss
            per_replica = strategy.run(replica_fn, args=(x, y))
            return strategy.reduce("SUM", per_replica, axis=None)  # = global total

    or ``model.compile(loss=loss_fn)`` + ``model.fit`` under the scope. With
    more than one replica in sync, each call all-reduces (one SUM all-reduce
    of a small float64 vector) the sufficient statistics of every term: the
    mel term's ``(loss x active samples, active samples)`` for ``per_sample``
    normalisation or ``(loss x valid elements, valid elements)`` for
    ``global``, its non-finite and valid element counts, the stop term's BCE
    sum / frame count / non-finite count, and each extra term's value (its
    mean over replicas: give every replica the same batch size). The mel loss
    of the global batch is thus what one device would compute on it (up to
    summation order), the running statistics are updated from it with
    :func:`myxtts_ops.reference.update_state`, and every replica takes the
    same decision and writes the same state: the trajectory equals a
    single-device run over the same global batches. Each replica returns
    ``global total / num_replicas_in_sync`` whose gradient is that replica's
    share of the global total's gradient, so the SUM of the replicas'
    gradients (what ``optimizer.apply_gradients`` does in replica context,
    and Keras 3 ``fit``, which does not divide by the number of replicas
    itself: Keras losses do) is the single-device gradient of the global
    batch. Reduce the returned values with SUM to log the global total (Keras
    ``fit`` logs it already). Caveats: a non-finite extra-term value is zeroed
    per replica (the step is unstable either way); in ``per_sample`` mode a
    sample whose valid elements are all non-finite still counts as active
    (the step is unstable either way). With one replica (or when called in
    cross-replica context) none of this happens.
    """

    def __init__(
        self,
        mel_loss_weight=None,
        use_adaptive_weights=None,
        loss_smoothing_factor=None,
        max_loss_spike_threshold=None,
        gradient_norm_threshold=None,
        *,
        config=None,
        extra_losses=None,
        implementation="fused",
        verbose=False,
        name="xtts_loss",
        reduction="none",
        dtype=None,
        **settings,
    ):
        keras.losses.Loss.__init__(self, name=name, reduction=reduction, dtype=dtype)
        if config is None:
            config = XTTSLossConfig()
        elif isinstance(config, collections.abc.Mapping):
            config = XTTSLossConfig().replace(**config)
        elif not isinstance(config, XTTSLossConfig):
            raise ValueError(
                f"config must be an XTTSLossConfig or a dict of its fields, got config={config!r}"
            )
        explicit = dict(settings)
        for arg, value in zip(
            _SEED_ARGS,
            (
                mel_loss_weight,
                use_adaptive_weights,
                loss_smoothing_factor,
                max_loss_spike_threshold,
                gradient_norm_threshold,
            ),
        ):
            if value is not None:
                explicit[arg] = value
        unknown = sorted(set(explicit) - set(XTTSLossConfig.field_names()))
        if unknown:
            raise ValueError(
                f"unknown XTTSLoss setting(s): {', '.join(unknown)}; "
                f"known settings: {', '.join(XTTSLossConfig.field_names())}"
            )
        self.config = config.replace(**explicit) if explicit else config
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got implementation={implementation!r}"
            )
        self.implementation = implementation
        self.verbose = bool(verbose)

        import myxtts_ops

        self._STATE_SIZE = myxtts_ops.STATE_SIZE
        c = self.config
        self._state = _XTTSLossState(float(c.mel_loss_weight), self._STATE_SIZE, c.use_adaptive_weights)
        self._extra_fns = {}
        self._extra_weights = {}
        for term, spec in (extra_losses or {}).items():
            if callable(spec):
                self.add_loss_term(term, spec)
            else:
                fn, weight = spec
                self.add_loss_term(term, fn, weight)

    # ------------------------------------------------------------ properties
    @property
    def step_count(self):
        """int64 variable: number of (training) calls so far."""
        return self._state.step_count

    @property
    def current_mel_weight(self):
        return self._state.current_mel_weight

    @property
    def state_variables(self):
        """Every state variable (for inspection/tests)."""
        return list(self._state.variables)

    @property
    def mel_loss_weight(self):
        return float(self.config.mel_loss_weight)

    @property
    def stop_loss_weight(self):
        return float(self.config.stop_loss_weight)

    # ---------------------------------------------------------- registration
    def add_loss_term(self, name, fn, weight=1.0):
        """Register ``fn(y_true, y_pred) -> scalar`` as a term with a fixed ``weight``.

        Register terms before the first call (a traced function would not see it).
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"loss term name must be an identifier string, got name={name!r}")
        if name in ("mel_loss", "stop_loss", "total_loss") or name in self._extra_fns:
            raise ValueError(f"loss term name={name!r} is already used")
        if not callable(fn):
            raise ValueError(f"loss term {name!r}: fn must be callable, got {fn!r}")
        weight = float(weight)
        if not math.isfinite(weight):
            raise ValueError(f"loss term {name!r}: weight must be finite, got weight={weight!r}")
        self._extra_fns[name] = fn
        self._extra_weights[name] = weight
        self._state.add_extra(name)

    # ----------------------------------------------------------------- call
    def __call__(self, y_true, y_pred, sample_weight=None, *, mel_lengths=None, training=True):
        if sample_weight is not None:
            raise ValueError(
                "XTTSLoss does not support sample_weight (got sample_weight="
                f"{sample_weight!r}); mask frames with mel_lengths instead"
            )
        with tf.name_scope(self.name or "xtts_loss"):
            return self._compute(y_true, y_pred, mel_lengths, training)

    def call(self, y_true, y_pred):
        """Keras ``Loss.call`` API: same as calling the loss."""
        return self._compute(y_true, y_pred, None, True)

    def _mel_op(self):
        if self.implementation == "reference":
            from myxtts_ops import reference

            return reference.masked_mel_loss
        import myxtts_ops

        return myxtts_ops.masked_mel_loss

    def _unpack(self, y_true, y_pred, mel_lengths):
        true_is_dict = isinstance(y_true, collections.abc.Mapping)
        pred_is_dict = isinstance(y_pred, collections.abc.Mapping)
        stop_true = stop_pred = None
        lengths = None
        if true_is_dict:
            if "mel_target" not in y_true:
                raise ValueError(
                    f"y_true dict needs a 'mel_target' entry, got keys {sorted(y_true)}"
                )
            mel_true = y_true["mel_target"]
            lengths = y_true.get("mel_lengths")
            stop_true = y_true.get("stop_target")
        else:
            mel_true = y_true
        if pred_is_dict:
            if "mel_output" not in y_pred:
                raise ValueError(
                    f"y_pred dict needs a 'mel_output' entry, got keys {sorted(y_pred)}"
                )
            mel_pred = y_pred["mel_output"]
            stop_pred = y_pred.get("stop_tokens")
        else:
            mel_pred = y_pred
        if mel_lengths is not None:
            lengths = mel_lengths
        mel_pred = tf.convert_to_tensor(mel_pred)
        mel_true = tf.convert_to_tensor(mel_true)
        if mel_true.dtype != mel_pred.dtype:
            mel_true = tf.cast(mel_true, mel_pred.dtype)
        if lengths is not None:
            lengths = tf.convert_to_tensor(lengths)
            if not lengths.dtype.is_integer:
                lengths = tf.cast(lengths, tf.int32)
            if lengths.shape.rank is not None and lengths.shape.rank != 1:
                lengths = tf.reshape(lengths, [-1])
        if stop_true is None or stop_pred is None:
            stop_true = stop_pred = None
        return mel_true, mel_pred, lengths, stop_true, stop_pred

    def _stop_loss(self, stop_true, stop_pred, lengths, with_sums=False):
        """Masked stop-token BCE (float32) and the count of non-finite valid frames
        (``with_sums``: also the BCE sum and the valid-frame count it is divided by)."""
        c = self.config
        logits = tf.convert_to_tensor(stop_pred)
        labels = tf.convert_to_tensor(stop_true)
        logits = tf.cast(logits, tf.float32)
        labels = tf.cast(labels, tf.float32)
        if logits.shape.rank == 3:
            logits = tf.squeeze(logits, -1)
        if labels.shape.rank == 3:
            labels = tf.squeeze(labels, -1)
        finite = tf.logical_and(tf.math.is_finite(logits), tf.math.is_finite(labels))
        if lengths is not None:
            frames = tf.range(tf.shape(logits)[1], dtype=lengths.dtype)
            mask = frames[tf.newaxis, :] < lengths[:, tf.newaxis]
        else:
            mask = tf.ones_like(finite)
        valid = tf.logical_and(mask, finite)
        nonfinite = tf.reduce_sum(tf.cast(tf.logical_and(mask, tf.logical_not(finite)), tf.int64))
        zeros = tf.zeros_like(logits)
        labels = tf.where(valid, labels, zeros)
        logits = tf.where(valid, logits, zeros)
        if c.stop_label_smoothing > 0:
            labels = labels * (1.0 - c.stop_label_smoothing) + 0.5 * c.stop_label_smoothing
        if c.stop_from_logits:
            ce = tf.nn.weighted_cross_entropy_with_logits(
                labels=labels, logits=logits, pos_weight=c.stop_positive_weight
            )
        else:
            eps = 1e-7
            p = tf.clip_by_value(logits, eps, 1.0 - eps)
            ce = -(c.stop_positive_weight * labels * tf.math.log(p) + (1.0 - labels) * tf.math.log(1.0 - p))
        count = tf.reduce_sum(tf.cast(valid, tf.float32))
        total = tf.reduce_sum(tf.where(valid, ce, zeros))
        loss = tf.math.divide_no_nan(total, count)
        if with_sums:
            return loss, nonfinite, total, count
        return loss, nonfinite

    def _compute(self, y_true, y_pred, mel_lengths, training):
        c = self.config
        st = self._state
        mel_true, mel_pred, lengths, stop_true, stop_pred = self._unpack(y_true, y_pred, mel_lengths)
        replicas = _replicas_in_sync()

        old_state = st.op_state.read_value()
        out = self._mel_op()(
            mel_true,
            mel_pred,
            lengths,
            old_state,
            loss_type=c.mel_loss_type,
            huber_delta=c.mel_huber_delta,
            normalization=c.mel_normalization,
        )
        if replicas > 1:
            return self._compute_distributed(
                y_true, y_pred, mel_true, lengths, stop_true, stop_pred, out, old_state,
                replicas, training,
            )
        mel = out.loss
        ldt = mel.dtype  # float32, or float64 for float64 mels
        terms = {}
        finite_terms = []
        if stop_true is not None:
            stop, stop_nonfinite = self._stop_loss(stop_true, stop_pred, lengths)
            terms["stop_loss"] = (tf.cast(stop, ldt), c.stop_loss_weight)
            finite_terms.append(tf.equal(stop_nonfinite, 0))  # a count: == 0 is "not > 0"
        for term, fn in self._extra_fns.items():
            value = tf.cast(tf.reshape(fn(y_true, y_pred), []), ldt)
            finite_terms.append(tf.math.is_finite(value))
            terms[term] = (_finite_or_zero(value), self._extra_weights[term])

        other = tf.zeros([], ldt) if terms else None  # None: no other term (no op)
        for value, weight in terms.values():
            other = other + tf.constant(weight, ldt) * value

        w = st.current_mel_weight.read_value()
        if not training:
            total = tf.cast(w, ldt) * mel
            if other is not None:
                total = total + other
            return _finite_or_zero(total)

        new_w, total32 = self._update(
            out.state, out.nonfinite_count, old_state, mel, other, finite_terms, w, return_total=True
        )
        if ldt == tf.float32:
            total = total32  # the same new_w * mel + other (differentiable in mel)
        else:
            total = tf.cast(new_w, ldt) * mel
            if other is not None:
                total = total + other
        total = _finite_or_zero(total)
        self._record_last(mel, total, new_w, terms)
        return total

    def _record_last(self, mel, total, new_w, terms):
        """Latest values for get_losses() / get_weighted_losses()."""
        st = self._state
        # (assignments are not differentiated: no stop_gradient needed)
        st.last_mel_loss.assign(_finite_or_zero(tf.cast(mel, tf.float32)))
        st.last_total_loss.assign(tf.cast(total, tf.float32))
        st.last_mel_weight.assign(new_w)
        if "stop_loss" in terms:
            st.last_stop_loss.assign(tf.cast(terms["stop_loss"][0], tf.float32))
        for term in self._extra_fns:
            st.extra_losses[term].assign(tf.cast(terms[term][0], tf.float32))

    # ------------------------------------------------------- tf.distribute
    def _compute_distributed(
        self, y_true, y_pred, mel_true, lengths, stop_true, stop_pred, out, old_state,
        replicas, training,
    ):
        """One replica's call when ``num_replicas_in_sync > 1`` (see the class docstring).

        The sufficient statistics of every term are summed over the replicas
        with one all-reduce, giving the loss of the global batch exactly as a
        single device would compute it (up to the summation order); the
        running statistics are then updated from that global loss with
        :func:`myxtts_ops.reference.update_state` (the op's own per-replica
        state output is not used), so every replica makes the same decision
        and writes the same state. The value returned is ``global total /
        num_replicas``; its gradient is this replica's share of the gradient
        of the global total, so the SUM over replicas of the gradients (what
        ``tf.distribute`` optimizers and Keras do) is the single-device
        gradient of the global batch.
        """
        from myxtts_ops import reference

        c = self.config
        st = self._state
        f64 = tf.float64
        ctx = tf.distribute.get_replica_context()
        mel = out.loss
        ldt = mel.dtype
        sg = tf.stop_gradient

        # Mel term: (loss * active, active) for per_sample normalisation,
        # (loss * n, n) with n = valid finite elements for global.
        shape = tf.shape(mel_true, out_type=tf.int64)
        batch, frames, mels = shape[0], shape[1], shape[2]
        if lengths is None:
            lens = tf.fill([batch], frames)
        else:
            lens = tf.clip_by_value(tf.cast(lengths, tf.int64), 0, frames)
        valid_count = tf.reduce_sum(lens) * mels
        nonfinite = out.nonfinite_count
        if c.mel_normalization == "per_sample":
            weight_r = tf.reduce_sum(tf.cast(tf.logical_and(lens > 0, mels > 0), tf.int64))
        else:
            weight_r = tf.maximum(valid_count - nonfinite, 0)
        weight_r = tf.cast(weight_r, f64)
        stats = [sg(tf.cast(mel, f64)) * weight_r, weight_r, tf.cast(nonfinite, f64), tf.cast(valid_count, f64)]

        stop_sum = stop_count = None
        if stop_true is not None:
            _, stop_nonfinite, stop_sum, stop_count = self._stop_loss(
                stop_true, stop_pred, lengths, with_sums=True
            )
            stats += [sg(tf.cast(stop_sum, f64)), tf.cast(stop_count, f64), tf.cast(stop_nonfinite, f64)]
        extra_values = {}
        for term, fn in self._extra_fns.items():
            value = tf.cast(tf.reshape(fn(y_true, y_pred), []), ldt)
            finite = tf.math.is_finite(value)
            extra_values[term] = _finite_or_zero(value)
            stats += [sg(tf.cast(extra_values[term], f64)), tf.cast(tf.logical_not(finite), f64)]

        g = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack(stats))
        g_weight = tf.maximum(g[1], 1.0)
        mel_global = tf.cast(g[0] / g_weight, ldt)
        nonfinite_global = tf.cast(g[2], tf.int64)
        valid_global = tf.cast(g[3], tf.int64)
        # This replica's share of the global mel loss (differentiable).
        mel_share = mel * tf.cast(weight_r / g_weight, ldt)

        terms = {}  # name -> (global value, weight)
        shares = {}  # name -> this replica's differentiable share of the global value
        finite_terms = []
        i = 4
        if stop_true is not None:
            g_count = tf.cast(g[i + 1], tf.float32)
            stop_global = tf.math.divide_no_nan(tf.cast(g[i], tf.float32), g_count)
            terms["stop_loss"] = (tf.cast(stop_global, ldt), c.stop_loss_weight)
            shares["stop_loss"] = tf.cast(tf.math.divide_no_nan(stop_sum, g_count), ldt)
            finite_terms.append(g[i + 2] <= 0)  # a count (never NaN)
            i += 3
        inv_replicas = 1.0 / replicas
        for term in self._extra_fns:
            terms[term] = (tf.cast(g[i] * inv_replicas, ldt), self._extra_weights[term])
            shares[term] = extra_values[term] * tf.constant(inv_replicas, ldt)
            finite_terms.append(g[i + 1] <= 0)  # a count (never NaN)
            i += 2

        other = tf.zeros([], ldt)
        other_share = tf.zeros([], ldt)
        for term, (value, weight) in terms.items():
            other = other + tf.constant(weight, ldt) * value
            other_share = other_share + tf.constant(weight, ldt) * shares[term]

        w = st.current_mel_weight.read_value()
        if training:
            new_state = reference.update_state(old_state, mel_global, nonfinite_global, valid_global)
            new_w = self._update(
                new_state, nonfinite_global, old_state, mel_global, other, finite_terms, w
            )
        else:
            new_w = w
        w_l = tf.cast(new_w, ldt)
        total = _finite_or_zero(w_l * mel_global + other)
        share = w_l * mel_share + other_share
        scale = tf.constant(inv_replicas, ldt)
        # Forward value: total / replicas on every replica; gradient: this replica's share.
        value = total * scale + (share - sg(share))
        value = tf.where(tf.math.is_finite(total), value, tf.zeros_like(value))
        if training:
            self._record_last(mel_global, total, new_w, terms)
        return value

    # ------------------------------------------------------ decision logic
    # The decision runs every training step, so it is written to execute as
    # few graph ops as possible: each variable is read once, AND-chains of
    # several conditions are one Pack + All, constants are folded in Python and
    # values whose gradient cannot reach the returned total skip stop_gradient.
    def _update(self, new_state, nonfinite_count, old_state, mel, other, finite_terms, w,
                return_total=False):
        """SPEC 4.1 on the op's outputs (new running statistics and non-finite
        count); assigns all state; returns the weight for this call (and, with
        ``return_total``, the float32 total ``new_w * mel + other``).

        ``other`` may be None (no other term); ``finite_terms`` are booleans
        that are true when the corresponding term is finite.
        """
        import myxtts_ops.state as sl

        c = self.config
        st = self._state
        f32, i64 = tf.float32, tf.int64
        # No stop_gradient needed: the decision only reaches the returned total
        # through new_w, which has no differentiable path to mel.
        mel = tf.cast(mel, f32)
        if other is not None:
            other = tf.cast(other, f32)

        # The bookkeeping starts once the op's loss is out: run earlier, its
        # many small ops compete with the (multi-threaded) op for the cores.
        with tf.control_dependencies([mel]):
            s = st.step_count.read_value() + 1
            consec = st.consecutive_stable_steps.read_value()
            last_change = st.last_weight_change_step.read_value()
            rt = st.running_total_loss.read_value()
            rt_init = st.running_total_initialized.read_value()
            enabled = st.adaptation_enabled.read_value()
            prev_w = st.previous_mel_weight.read_value()

        # 1. Clean / spike.
        total_pre = w * mel if other is None else w * mel + other
        finite_conds = [tf.equal(nonfinite_count, 0), tf.math.is_finite(total_pre)] + list(finite_terms)
        finite = _all_of(finite_conds)
        has_valid = new_state[sl.CLEAN_STEPS] > old_state[sl.CLEAN_STEPS]
        clean = tf.logical_and(finite, has_valid)
        spike_limit = c.max_loss_spike_threshold * rt
        check_spike = tf.logical_and(s > SPIKE_MIN_STEPS, rt_init)
        spike_hit = tf.logical_and(check_spike, total_pre > spike_limit)
        spike = tf.logical_and(clean, spike_hit)

        # 2. Gate (stable = clean and not a spike). passed and decide are each
        # one flat AND of their conditions, so that the weight (which the
        # gradient waits for) depends on the op's outputs through few ops.
        running_mean, variance = tf.unstack(
            tf.cast(tf.gather(new_state, [sl.RUNNING_MEAN, sl.WINDOW_VARIANCE]), f32)
        )
        consec_plus = consec + 1
        passed_conds = finite_conds + [
            has_valid,
            tf.logical_not(spike_hit),
            enabled,
            s >= c.adaptive_weight_min_warmup_steps,
            s - last_change >= c.adaptive_weight_cooling_period,
            variance < c.adaptive_weight_variance_threshold,
        ]
        passed = _all_of(passed_conds)
        consec = tf.where(passed, consec_plus, tf.constant(0, i64))

        # 3.-4. Only on steps that decide (passed and the new consecutive count
        # reaches min_stable_steps): direction, candidate, validation
        # (skipped, with all their ops, on the other steps).
        decide = _all_of(passed_conds + [consec_plus >= c.adaptive_weight_min_stable_steps])
        mel_sg = tf.stop_gradient(mel)  # the branch is never differentiated
        zero_i = tf.constant(0, i64)

        def _decide():
            return self._direction_and_candidate(mel_sg, running_mean, w, s)

        def _keep():
            return w, tf.constant(False), zero_i, zero_i

        new_w, accept, accept_i, reject_i = tf.cond(decide, _decide, _keep)
        # new_w has no differentiable path to mel; without this the tape would
        # build (and run) a gradient of the cond.
        new_w = tf.stop_gradient(new_w)

        # 5. New state.
        total = new_w * mel if other is None else new_w * mel + other
        clipped = tf.where(check_spike, tf.minimum(total, spike_limit), total)
        a = c.loss_smoothing_factor
        new_rt = tf.where(
            clean, tf.where(rt_init, (1.0 - a) * rt + a * clipped, total), rt
        )

        st.op_state.assign(new_state)
        st.step_count.assign(s)
        st.current_mel_weight.assign(new_w)
        st.previous_mel_weight.assign(tf.where(accept, w, prev_w))
        st.last_weight_change_step.assign(tf.where(accept, s, last_change))
        st.consecutive_stable_steps.assign(tf.where(accept, tf.constant(0, i64), consec))
        st.running_total_loss.assign(new_rt)
        st.running_total_initialized.assign(tf.logical_or(rt_init, clean))
        st.nonfinite_steps.assign_add(tf.where(finite, tf.constant(0, i64), tf.constant(1, i64)))
        st.spike_count.assign_add(tf.cast(spike, i64))
        st.weight_changes.assign_add(accept_i)
        st.rejected_changes.assign_add(reject_i)
        if return_total:
            return new_w, total
        return new_w

    def _direction_and_candidate(self, mel, running_mean, w, s):
        """Steps 3-4 of SPEC 4.1 on a deciding step: returns (new weight, accept,
        accept as int64, reject as int64)."""
        c = self.config
        i64 = tf.int64
        # Direction (+1 up, -1 down, 0 none) as the factor 1 + pct * direction.
        ratio = tf.clip_by_value(
            mel / tf.maximum(tf.abs(running_mean), _RATIO_EPS), _RATIO_MIN, _RATIO_MAX
        )
        growing = self._gradients_growing()
        ratio_high = ratio > c.adaptive_weight_loss_high_ratio
        ratio_low = ratio < c.adaptive_weight_loss_low_ratio
        # up = ratio_high and not growing; down = ratio_low or growing (exclusive).
        one = np.float32(1.0)
        pct = np.float32(c.adaptive_weight_max_change_percent)
        f_up, f_down = one + pct, one - pct
        factor = tf.where(growing, f_down, tf.where(ratio_high, f_up, tf.where(ratio_low, f_down, one)))
        if f_up != one and f_down != one:
            attempt = tf.not_equal(factor, one)  # direction != 0
        else:  # pct too small to move the factor off 1 in float32
            attempt = _any_of([ratio_high, ratio_low, growing])

        # Candidate and validation. cand = clip(...) lies in [lo, hi] unless it
        # is NaN, and a NaN cand makes weighted NaN, which fails
        # weighted <= max_weighted_loss: the bound and finiteness checks of cand
        # are implied by those of weighted.
        lo, hi = c.adaptive_weight_min_weight, c.adaptive_weight_max_weight
        cand = tf.clip_by_value(w * factor, lo, hi)
        weighted = cand * mel
        valid = _all_of(
            [
                tf.not_equal(cand, w),
                tf.math.is_finite(weighted),
                weighted <= c.adaptive_weight_max_weighted_loss,
            ]
        )
        accept = tf.logical_and(attempt, valid)
        attempt_i = tf.cast(attempt, i64)
        accept_i = tf.cast(accept, i64)
        new_w = tf.where(accept, cand, w)

        if self.verbose and not _in_xla():
            def _log():
                tf.print(
                    "XTTSLoss: step", s, "mel weight", w, "->", new_w,
                    "(ratio", ratio, ", growing gradients", growing, ")",
                )
                return tf.constant(True)

            tf.cond(accept, _log, lambda: tf.constant(False))
        return new_w, accept, accept_i, attempt_i - accept_i  # reject: attempt and not valid

    def _gradients_growing(self):
        """Whether the newest gradient norm exceeds both the growth factor x the
        mean of the previous (up to 10) norms and the threshold.

        Slots of the ring buffer not yet written hold 0 (initial value, reset),
        so the sum of the whole buffer is the sum of the held norms.
        """
        st = self._state
        c = self.config
        count = st.gradient_norm_count.read_value()
        hist = st.gradient_norms.read_value()
        newest = tf.gather(hist, tf.math.floormod(count + (_GRAD_RING - 1), _GRAD_RING))
        total = tf.reduce_sum(hist)
        # max(min(count, RING) - 1, 1) previous norms (only used when count >= 2).
        n_prev = tf.clip_by_value(count - 1, 1, _GRAD_RING - 1)
        prev_mean = (total - newest) / tf.cast(n_prev, tf.float32)
        return _all_of(
            [
                count >= 2,
                newest > c.adaptive_weight_gradient_growth_factor * prev_mean,
                newest > c.gradient_norm_threshold,
            ]
        )

    # ---------------------------------------------------- gradient norms
    def observe_gradient_norm(self, norm):
        """Record the gradient norm of the step (a scalar, or a list of gradient tensors).

        Call it after computing the gradients of the loss returned by this
        object; the next call uses it. Non-finite norms are ignored (counted in
        ``nonfinite_gradient_norms``). Returns the recorded norm (float32).

        Under ``tf.distribute`` (called in replica context with more than one
        replica): a list of this replica's gradients is summed over the
        replicas first (one all-reduce), so the recorded norm is that of the
        global batch's gradient, as on a single device; a scalar is averaged
        over the replicas (exact when it is the norm of already-aggregated
        gradients; otherwise the mean of the replicas' norms), so every
        replica records the same value.
        """
        st = self._state
        replicas = _replicas_in_sync()
        if isinstance(norm, (list, tuple)):
            grads = [g for g in norm if g is not None]
            if replicas > 1 and grads:
                # The norm of the gradient of the global batch (the SUM of the replicas').
                grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            norm = tf.linalg.global_norm(grads)
        norm = tf.cast(tf.reshape(tf.convert_to_tensor(norm), []), tf.float32)
        if replicas > 1:
            # Keep every replica's history identical: a norm computed from
            # already-aggregated gradients is unchanged, per-replica norms are averaged.
            norm = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, norm)
        finite = tf.math.is_finite(norm)
        count = st.gradient_norm_count.read_value()
        hist = st.gradient_norms.read_value()
        idx = tf.math.floormod(count, _GRAD_RING)
        updated = tf.tensor_scatter_nd_update(hist, tf.reshape(idx, [1, 1]), tf.reshape(norm, [1]))
        st.gradient_norms.assign(tf.where(finite, updated, hist))
        st.gradient_norm_count.assign(count + tf.cast(finite, tf.int64))
        st.nonfinite_gradient_norms.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
        return norm

    def gradient_norm_history(self):
        """The observed norms still held (oldest first), as a float32 tensor."""
        st = self._state
        count = st.gradient_norm_count.read_value()
        n = tf.minimum(count, _GRAD_RING)
        start = count - n
        idx = tf.math.floormod(start + tf.range(n), _GRAD_RING)
        return tf.gather(st.gradient_norms.read_value(), idx)

    # ------------------------------------------------------------ metrics
    def _avg_gradient_norm(self):
        hist = self.gradient_norm_history()
        recent = hist[-GRADIENT_NORM_HISTORY:]
        return tf.math.divide_no_nan(tf.reduce_sum(recent), tf.cast(tf.size(recent), tf.float32))

    def get_stability_metrics(self):
        """Snapshot scalar tensors: running_mel_loss, running_total_loss, loss_variance,
        loss_stability_score (= exp(-loss_variance)), step_count, nonfinite_steps, spike_count."""
        import myxtts_ops.state as sl

        st = self._state
        op_state = st.op_state.read_value()
        variance = tf.cast(op_state[sl.WINDOW_VARIANCE], tf.float32)
        return {
            "running_mel_loss": tf.cast(op_state[sl.RUNNING_MEAN], tf.float32),
            "running_total_loss": tf.identity(st.running_total_loss.read_value()),
            "loss_variance": variance,
            "loss_stability_score": tf.exp(-variance),
            "step_count": tf.identity(st.step_count.read_value()),
            "nonfinite_steps": tf.identity(st.nonfinite_steps.read_value()),
            "spike_count": tf.identity(st.spike_count.read_value()),
        }

    def get_adaptive_weight_metrics(self):
        """Snapshot scalar tensors: current/previous/base mel weight, steps since the
        last change, consecutive stable steps, whether adaptation is enabled, the mean
        of the last (up to 10) observed gradient norms, weight_changes, rejected_changes."""
        st = self._state
        step = st.step_count.read_value()
        return {
            "current_mel_weight": tf.identity(st.current_mel_weight.read_value()),
            "previous_mel_weight": tf.identity(st.previous_mel_weight.read_value()),
            "base_mel_weight": tf.constant(float(self.config.mel_loss_weight), tf.float32),
            "steps_since_weight_change": step - st.last_weight_change_step.read_value(),
            "consecutive_stable_steps": tf.identity(st.consecutive_stable_steps.read_value()),
            "weight_adjustment_enabled": tf.identity(st.adaptation_enabled.read_value()),
            "avg_gradient_norm": self._avg_gradient_norm(),
            "weight_changes": tf.identity(st.weight_changes.read_value()),
            "rejected_changes": tf.identity(st.rejected_changes.read_value()),
        }

    def get_losses(self):
        """Latest unweighted values: mel_loss, stop_loss, registered terms, total_loss."""
        st = self._state
        out = {
            "mel_loss": tf.identity(st.last_mel_loss.read_value()),
            "stop_loss": tf.identity(st.last_stop_loss.read_value()),
        }
        for term, var in st.extra_losses.items():
            out[term] = tf.identity(var.read_value())
        out["total_loss"] = tf.identity(st.last_total_loss.read_value())
        return out

    def get_weighted_losses(self):
        """Latest weighted values (the terms of the returned total) and total_loss."""
        st = self._state
        out = {
            "mel_loss": st.last_mel_weight.read_value() * st.last_mel_loss.read_value(),
            "stop_loss": self.config.stop_loss_weight * st.last_stop_loss.read_value(),
        }
        for term, var in st.extra_losses.items():
            out[term] = self._extra_weights[term] * var.read_value()
        out["total_loss"] = tf.identity(st.last_total_loss.read_value())
        return out

    # ------------------------------------------------------------ controls
    def disable_adaptive_weights(self):
        """No further weight changes; the mel weight returns to the base weight."""
        st = self._state
        st.adaptation_enabled.assign(False)
        st.current_mel_weight.assign(float(self.config.mel_loss_weight))
        st.consecutive_stable_steps.assign(0)

    def enable_adaptive_weights(self):
        """Resume adaptation (ValueError if the base weight is outside the bounds)."""
        self.config.check_base_weight_in_bounds()
        self._state.adaptation_enabled.assign(True)

    def reset_stability_state(self):
        """Every counter, history, statistic and weight back to its initial value
        (the enabled/disabled switch is kept)."""
        self._state.reset()

    # ---------------------------------------------------- serialization
    def get_config(self):
        cfg = {"name": self.name, "implementation": self.implementation, "verbose": self.verbose}
        cfg.update(self.config.to_dict())
        return cfg

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("reduction", None)
        return cls(**config)


def _replicas_in_sync():
    """``num_replicas_in_sync`` of the current replica context (1 outside one)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: a single, global call
        return 1
    return int(ctx.num_replicas_in_sync)


def _in_xla():
    try:
        from myxtts_ops.ops import in_xla_context
    except Exception:  # pragma: no cover - op package without ops.py
        return False
    return in_xla_context()
