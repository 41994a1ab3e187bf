"""XTTSLoss: the whole MyXTTS training loss on the fused mel op, with the stable adaptive mel weight.

How one call runs (one code path for one device and for ``tf.distribute``):

1. inputs are checked (:func:`myxtts_loss.terms.check_inputs`: misspelt keys,
   shapes against the mel batch; :func:`~myxtts_loss.terms.as_lengths`:
   non-integral lengths), and the active terms are the registry entries whose
   keys are all present (:data:`myxtts_loss.terms.TERMS`);
2. every active term builds its sufficient statistics ``(num, den, nonfinite)``
   (the mel term from the fused op's outputs);
3. the statistics are reduced: nothing to do on one replica, one SUM
   all-reduce of a small float64 vector with more than one;
4. finalise once (:func:`myxtts_loss.finalise.finalise_terms`): each term's
   value of the whole (global) batch; the adaptive-weight rule
   (:func:`myxtts_loss.rule.adaptive_weight_step`, a pure function) and the
   smoothing (:func:`myxtts_loss.rule.smoothing_step`) run on those values;
   the total is combined with the rule's weight; the state is written
   (:mod:`myxtts_loss.state`).

The returned value is the raw total ``w_mel * mel + sum_i w_i * term_i`` (what
is differentiated). Under ``tf.distribute`` each replica returns ``total /
num_replicas_in_sync`` whose gradient is that replica's share of the
gradient of the global total, so the SUM of the replicas' gradients is the
single-device gradient of the global batch.
"""

import collections.abc
import contextlib
import logging
import math
import threading
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.trackable.autotrackable import AutoTrackable

from myxtts_loss import finalise, rule, terms
from myxtts_loss import gradient_norm as gn
from myxtts_loss.config import (
    FLOAT32_MAX,
    IMPLEMENTATIONS,
    MYXTTS_ARGS,
    XTTSLossConfig,
    unknown_settings_message,
)
from myxtts_loss.state import LossState, SettingsRecord

__all__ = ["XTTSLoss", "GRADIENT_NORM_HISTORY", "ConcurrentCallError"]

GRADIENT_NORM_HISTORY = gn.GRADIENT_NORM_HISTORY
_REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None)
_TERM_INDEX = {name: i for i, name in enumerate(terms.TERM_NAMES)}
_LOG = logging.getLogger("myxtts_loss")


class ConcurrentCallError(RuntimeError):
    """Two threads called one XTTSLoss at the same time (its state update is not shared-safe)."""


def _replicas_in_sync():
    """``num_replicas_in_sync`` of the current replica context (1 outside one)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: a single, global call
        return 1
    return int(ctx.num_replicas_in_sync)


def _scalar(value, what, expected):
    """``value`` as a float32 scalar; a ValueError naming ``what`` if its static
    shape holds more (or fewer) than one element."""
    t = tf.convert_to_tensor(value)
    if t.shape.num_elements() not in (None, 1):
        raise ValueError(f"{what} must be {expected}, got a tensor of shape {t.shape}")
    return tf.cast(tf.reshape(t, []), tf.float32)


def _op_normalization(mel_normalization):
    """The fused op's normalisation for the mel term's: "batch" (the mean over
    all B) is computed from the op's per-sample values, normalised per sample."""
    return "global" if mel_normalization == "global" else "per_sample"


@keras.saving.register_keras_serializable(package="myxtts_loss")
class XTTSLoss(keras.losses.Loss, AutoTrackable):
    """MyXTTS's ``XTTSLoss``, as a drop-in (``notes/MYXTTS_COMPAT.md``), on the fused mel op.

    **Constructor**: the original's 18 arguments in its order
    (``mel_loss_weight=2.5, stop_loss_weight=1.0, attention_loss_weight=0.1,
    duration_loss_weight=0.1, pitch_loss_weight=0.1, energy_loss_weight=0.1,
    prosody_pitch_loss_weight=0.05, prosody_energy_loss_weight=0.05,
    speaking_rate_loss_weight=0.05, voice_similarity_loss_weight=1.0,
    diffusion_loss_weight=1.0, use_adaptive_weights=True,
    loss_smoothing_factor=0.1, max_loss_spike_threshold=2.0,
    gradient_norm_threshold=5.0, contrastive_temperature=0.1,
    contrastive_margin=0.2, name="xtts_loss"``), any other field of
    :class:`~myxtts_loss.config.XTTSLossConfig` as a keyword, and/or
    ``config=`` (keywords override it). Every setting is validated here
    (``ValueError`` naming it). ``extra_losses={"name": fn or (fn, weight)}``
    adds terms ``fn(y_true, y_pred) -> scalar``; ``implementation="fused"``
    or ``"reference"``; ``verbose=True`` prints (outside XLA) on weight
    changes. ``reduction`` is accepted for Keras compatibility (every Keras
    reduction is the identity on this scalar loss); ``dtype`` must be
    float32 (None), anything else is refused.
    :meth:`myxtts_original` builds the preset that reproduces the original's
    numbers (Huber mel loss with deterministic target noise, batch-mean
    normalisation).

    **Inputs**: ``loss(y_true, y_pred)`` with the dicts of the contract
    (section 2; a term is active when all its keys are present), or plain mel
    tensors ``loss(mel_target, mel_output, mel_lengths=...)``. Stop tokens are
    probabilities unless ``stop_from_logits=True``.

    **Returns** the raw total (float32; float64 for float64 mels).
    ``get_raw_total_loss()`` returns the same value; the smoothed total
    (contract section 4) is reported by ``get_smoothed_total_loss()`` and in
    ``get_stability_metrics()``, never differentiated.

    **Training state** (adaptive weight, statistics, counters) moves on calls
    with ``training=True``; ``training=False`` leaves it alone, and so does
    every call inside ``with loss.validation():`` or while
    ``loss.update_state_on_call`` is False (a switch a trainer sets without
    changing its call sites; read when a call is traced).

    **Concurrency**: one XTTSLoss must not be called from two threads at once.
    Eager calls that overlap raise :class:`ConcurrentCallError`; a compiled
    function that calls the loss must not be run from two threads at once
    either (a graph cannot detect it).
    """

    def __init__(
        self,
        mel_loss_weight=None,
        stop_loss_weight=None,
        attention_loss_weight=None,
        duration_loss_weight=None,
        pitch_loss_weight=None,
        energy_loss_weight=None,
        prosody_pitch_loss_weight=None,
        prosody_energy_loss_weight=None,
        speaking_rate_loss_weight=None,
        voice_similarity_loss_weight=None,
        diffusion_loss_weight=None,
        use_adaptive_weights=None,
        loss_smoothing_factor=None,
        max_loss_spike_threshold=None,
        gradient_norm_threshold=None,
        contrastive_temperature=None,
        contrastive_margin=None,
        name="xtts_loss",
        *,
        config=None,
        extra_losses=None,
        implementation="fused",
        verbose=False,
        reduction="sum_over_batch_size",
        dtype=None,
        **settings,
    ):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got reduction={reduction!r}")
        if dtype is not None and str(getattr(dtype, "name", dtype)) != "float32":
            raise ValueError(
                f"dtype must be None or 'float32', got dtype={dtype!r}: XTTSLoss keeps mel inputs "
                "in their own dtype for the fused op and computes every other term in float32"
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got name={name!r}")
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
        args = locals()
        for arg in MYXTTS_ARGS:
            if args[arg] is not None:
                explicit[arg] = args[arg]
        unknown = sorted(set(explicit) - set(XTTSLossConfig.field_names()))
        if unknown:
            raise ValueError(unknown_settings_message(unknown))
        self.config = config.replace(**explicit) if explicit else config
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got implementation={implementation!r}"
            )
        if not isinstance(verbose, bool):
            raise ValueError(f"verbose must be a bool, got verbose={verbose!r}")
        self.implementation = implementation
        self.verbose = verbose
        self.update_state_on_call = True

        import myxtts_ops

        c = self.config
        self._state = LossState(
            c.mel_loss_weight, myxtts_ops.STATE_SIZE, c.use_adaptive_weights, terms.TERM_NAMES
        )
        self._settings_record = SettingsRecord(c)
        self._extra_fns = {}
        self._extra_weights = {}
        self._extra_specs = {}
        self._call_lock = threading.Lock()
        self._raw_total_tensor = None
        self._raw_total_stamp = None
        # Graph -> the registry terms its latest call had active, so the
        # getters list the same keys inside a tf.function as eagerly.
        self._active_in_graph = weakref.WeakKeyDictionary()
        self._warned_all_nonfinite = 0
        self.contrastive_loss = terms.ContrastiveSpeakerLoss(
            c.contrastive_temperature, c.contrastive_margin
        )
        for term, spec in (extra_losses or {}).items():
            if callable(spec):
                self.add_loss_term(term, spec)
            else:
                try:
                    fn, weight = spec
                except (TypeError, ValueError):
                    raise ValueError(
                        f"extra_losses[{term!r}] must be a callable or a (callable, weight) pair, "
                        f"got {spec!r}"
                    ) from None
                self.add_loss_term(term, fn, weight)

    # ------------------------------------------------------------ presets
    @classmethod
    def myxtts_original(cls, **kwargs):
        """The preset reproducing the original MyXTTS loss's numbers (contract 3.1):
        Huber (delta 1.0) mel loss with 0.05 * std target noise over the valid
        frames (deterministic: ``mel_noise_seed``), per-sample mean then the
        mean over all B samples. Takes the trainer's keyword arguments."""
        preset = dict(
            mel_loss_type="huber",
            mel_huber_delta=1.0,
            mel_label_smoothing=0.05,
            mel_normalization="batch",
        )
        preset.update(kwargs)
        return cls(**preset)

    # ------------------------------------------------------------ properties
    @property
    def step_count(self):
        """int64 variable: number of training calls so far."""
        return self._state.step_count

    @property
    def current_mel_weight(self):
        return self._state.current_mel_weight

    @property
    def previous_mel_weight(self):
        return self._state.previous_mel_weight

    @property
    def consecutive_stable_steps(self):
        return self._state.consecutive_stable_steps

    @property
    def last_weight_change_step(self):
        return self._state.last_weight_change_step

    @property
    def weight_adjustment_enabled(self):
        return self._state.adaptation_enabled

    @property
    def state_variables(self):
        """Every state variable (for inspection/tests)."""
        return list(self._state.variables)

    @property
    def training_state_variables(self):
        """The variables that training calls move (everything but the latest-call report)."""
        st = self._state
        report = {id(getattr(st, n)) for n in st.reporting_names} | {
            id(v) for v in st.extra_losses.values()
        }
        return [v for v in st.variables if id(v) not in report]

    @property
    def losses(self):
        """Snapshot of the latest unweighted terms (absent before the first call, as in MyXTTS)."""
        if not self._has_called():
            raise AttributeError(
                "'XTTSLoss' object has no attribute 'losses' before its first call"
            )
        return self.get_losses()

    def __getattr__(self, name):
        # The weight settings, as plain Python floats (the trainer logs them with float()).
        if name in MYXTTS_ARGS or name in ("stop_positive_weight", "mel_label_smoothing"):
            config = self.__dict__.get("config")
            if config is not None:
                return getattr(config, name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    # ---------------------------------------------------------- registration
    def add_loss_term(self, name, fn, weight=1.0):
        """Register ``fn(y_true, y_pred) -> scalar`` as a term with a fixed ``weight``
        (before the first call: a traced function would not see it)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"loss term name must be an identifier string, got name={name!r}")
        reserved = set(terms.TERM_NAMES) | {"raw_total_loss", "mel_weight", "total_loss"}
        if name in reserved or name in self._extra_fns:
            raise ValueError(f"loss term name={name!r} is already used")
        if not callable(fn):
            raise ValueError(f"loss term {name!r}: fn must be callable, got {fn!r}")
        if isinstance(weight, bool) or not isinstance(
            weight, (int, float, np.floating, np.integer)
        ):
            raise ValueError(f"loss term {name!r}: weight must be a number, got weight={weight!r}")
        weight = float(weight)
        if not math.isfinite(weight):
            raise ValueError(f"loss term {name!r}: weight must be finite, got weight={weight!r}")
        if abs(weight) > FLOAT32_MAX:
            # inf in the float32 graph: the term would add 0 and its gradient 0 * inf.
            raise ValueError(
                f"loss term {name!r}: weight must be finite in float32 "
                f"(|x| <= {FLOAT32_MAX:.8g}), got weight={weight!r}"
            )
        self._extra_fns[name] = fn
        self._extra_weights[name] = weight
        self._extra_specs[name] = (fn, weight)
        self._state.add_extra(name)

    # ------------------------------------------------------------ switches
    @contextlib.contextmanager
    def validation(self):
        """Calls inside leave the training state alone (as ``training=False``)."""
        previous = self.update_state_on_call
        self.update_state_on_call = False
        try:
            yield self
        finally:
            self.update_state_on_call = previous

    # ----------------------------------------------------------------- call
    def __call__(self, y_true, y_pred, sample_weight=None, *, mel_lengths=None, training=None):
        if sample_weight is not None:
            raise ValueError(
                "XTTSLoss does not support sample_weight (got sample_weight="
                f"{sample_weight!r}); mask frames with mel_lengths instead"
            )
        if training is None:
            training = self.update_state_on_call
        elif not isinstance(training, bool):
            raise ValueError(f"training must be a Python bool or None, got training={training!r}")
        replicas = _replicas_in_sync()
        if replicas > 1:
            self._check_created_in_scope(replicas)
        # Eager replicas of a MirroredStrategy are threads that call together by
        # design (their updates meet in an all-reduce): only other callers are refused.
        eager = tf.executing_eagerly() and replicas == 1
        if eager and not self._call_lock.acquire(blocking=False):
            raise ConcurrentCallError(
                f"XTTSLoss {self.name!r} is already being called from another thread; one loss "
                "object keeps one training state, so concurrent calls are refused. Use one loss "
                "per thread, or serialise the calls."
            )
        try:
            with tf.name_scope(self.name or "xtts_loss"):
                return self._compute(
                    y_true, y_pred, mel_lengths, training and self.update_state_on_call
                )
        finally:
            if eager:
                self._call_lock.release()

    def _check_created_in_scope(self, replicas):
        strategy = tf.distribute.get_strategy()
        if not strategy.extended.variable_created_in_scope(self._state.step_count):
            raise ValueError(
                f"XTTSLoss {self.name!r} was created outside the scope of the "
                f"{type(strategy).__name__} that now runs it on {replicas} replicas, so its "
                f"training state is one plain variable that every replica would update "
                f"({replicas} steps counted per step). Create the loss inside "
                "`with strategy.scope():`."
            )

    def call(self, y_true, y_pred):
        """Keras ``Loss.call`` API: same as calling the loss."""
        return self._compute(y_true, y_pred, None, self.update_state_on_call)

    def _fused_ops(self):
        """Whether the terms run this project's ops (``implementation="fused"``)."""
        return self.implementation == "fused"

    def _fused_rule(self):
        """Whether the decision and the smoothing run as their ops (rule.rule_op_used)."""
        return self._fused_ops() and rule.rule_op_used()

    def _mel_op(self):
        if not self._fused_ops():
            from myxtts_ops import reference

            return reference.masked_mel_loss
        import myxtts_ops

        return myxtts_ops.masked_mel_loss

    def _inputs(self, y_true, y_pred, mel_lengths):
        """(y_true dict, y_pred dict, {"mel_lengths", "text_lengths"} int32 or None)."""
        true_is_dict = isinstance(y_true, collections.abc.Mapping)
        pred_is_dict = isinstance(y_pred, collections.abc.Mapping)
        if true_is_dict != pred_is_dict:
            raise ValueError(
                "y_true and y_pred must both be dicts or both be mel tensors, got "
                f"{type(y_true).__name__} and {type(y_pred).__name__}"
            )
        if true_is_dict:
            y_true, y_pred = dict(y_true), dict(y_pred)
        else:
            for where, value in (("y_true", y_true), ("y_pred", y_pred)):
                if isinstance(value, (tuple, list)):
                    # Eagerly it would stack into one tensor of another shape;
                    # traced, it would fail converting symbolic tensors.
                    raise ValueError(
                        f"{where} must be a dict of tensors (as the MyXTTS trainer passes) "
                        f"or one mel tensor, got a {type(value).__name__}"
                    )
            y_true, y_pred = {"mel_target": y_true}, {"mel_output": y_pred}
        if mel_lengths is not None:
            if "mel_lengths" in y_true:
                raise ValueError(
                    "mel lengths given twice: as the mel_lengths argument and as "
                    "y_true['mel_lengths']; give one"
                )
            y_true["mel_lengths"] = mel_lengths
        extra_keys = set()  # keys only extra terms know about: not checked for spelling
        if self._extra_fns:
            extra_keys = (set(y_true) | set(y_pred)) - terms.KNOWN_TRUE_KEYS - terms.KNOWN_PRED_KEYS
        checks = terms.check_inputs(y_true, y_pred, extra_keys)
        if checks:  # sizes unknown when traced: every known input waits for them
            with tf.control_dependencies(checks):
                y_true, y_pred = (
                    {k: tf.identity(v) if k in terms.KEY_SHAPES else v for k, v in d.items()}
                    for d in (y_true, y_pred)
                )
        if ("mel_target" in y_true) != ("mel_output" in y_pred):
            # Unlike the other terms (off while a key is missing, as in the
            # original): a misnamed mel key would silently remove the main term.
            missing = "y_pred['mel_output']" if "mel_target" in y_true else "y_true['mel_target']"
            raise ValueError(
                f"the mel term needs both mel_target and mel_output; {missing} is missing"
            )
        lengths = {
            key: (
                terms.as_lengths(y_true[key], key, bounds=terms.length_bounds(key, y_true, y_pred))
                if key in y_true
                else None
            )
            for key in ("mel_lengths", "text_lengths")
        }
        return y_true, y_pred, lengths

    def _mel_stats(self, y_true, y_pred, lengths, old_state):
        """The mel term's statistics from the fused op: (TermStats, valid count, op output)."""
        c = self.config
        mel_true, mel_pred = terms.common_mel_dtype(y_true["mel_target"], y_pred["mel_output"])
        lens = lengths["mel_lengths"]
        if c.mel_label_smoothing > 0:
            seed = tf.stack(
                [tf.constant(c.mel_noise_seed, tf.int64), self._state.step_count.read_value()]
            )
            mel_true = terms.mel_target_noise(mel_true, lens, c.mel_label_smoothing, seed)
        op_norm = _op_normalization(c.mel_normalization)
        out = self._mel_op()(
            mel_true,
            mel_pred,
            terms.op_lengths(y_true.get("mel_lengths"), lens, "mel_lengths"),
            old_state,
            loss_type=c.mel_loss_type,
            huber_delta=c.mel_huber_delta,
            normalization=op_norm,
            return_counts=True,
        )
        # The op says over what it averaged: samples with a counted element
        # (per_sample), elements before the lengths and how many of those
        # did not count (global).
        f32 = tf.float32
        nonfinite = out.nonfinite_count
        mel = out.loss
        valid = out.valid_count
        if c.mel_normalization == "per_sample":
            den = tf.cast(out.active_count, mel.dtype)
            stats = terms.TermStats(mel * den, den, tf.cast(nonfinite, f32))
        elif c.mel_normalization == "global":
            den = tf.cast(valid - nonfinite, mel.dtype)
            stats = terms.TermStats(mel * den, den, tf.cast(nonfinite, f32))
        else:  # batch: per-sample means, then the mean over all B samples
            batch = tf.shape(out.per_sample)[0]
            stats = terms.TermStats(
                tf.reduce_sum(out.per_sample), tf.cast(batch, mel.dtype), tf.cast(nonfinite, f32)
            )
        return stats, valid, out

    def term_functions(self, y_true, y_pred):
        """``{term name: fn()}`` for every active term of these inputs; ``fn()`` returns
        the term's unweighted value (mel: the fused op's loss). For profilers: time
        each in a graph, with or without its gradient, to see its share of a step."""
        y_true, y_pred, lengths = self._inputs(y_true, y_pred, None)
        c = self.config
        out = {}
        for term in terms.TERMS:
            if not term.active(y_true, y_pred):
                continue
            if term.name == "mel_loss":
                out[term.name] = lambda: terms.stats_value(
                    self._mel_stats(y_true, y_pred, lengths, self._state.op_state.read_value())[0]
                )
            else:
                out[term.name] = lambda term=term: terms.term_value(
                    term, term.stats(y_true, y_pred, lengths, c, self._fused_ops())
                )
        return out

    def _compute(self, y_true, y_pred, mel_lengths, training):
        from myxtts_ops import reference

        c = self.config
        st = self._state
        f32 = tf.float32
        sg = tf.stop_gradient
        y_true, y_pred, lengths = self._inputs(y_true, y_pred, mel_lengths)
        replicas = _replicas_in_sync()

        # 1.-2. Statistics of every active term.
        stats, weights, clips = {}, {}, {}
        old_state = st.op_state.read_value()
        mel_out = None
        mel_valid = None
        for term in terms.TERMS:
            if not term.active(y_true, y_pred):
                continue
            if term.name == "mel_loss":
                stats[term.name], mel_valid, mel_out = self._mel_stats(
                    y_true, y_pred, lengths, old_state
                )
            else:
                stats[term.name] = term.stats(y_true, y_pred, lengths, c, self._fused_ops())
            weights[term.name] = 1.0 if term.weight is None else getattr(c, term.weight)
            clips[term.name] = term.clip
        for name, fn in self._extra_fns.items():
            value = _scalar(fn(y_true, y_pred), f"extra loss {name!r}", "a scalar")
            finite = tf.math.is_finite(value)
            stats[name] = terms.TermStats(
                finalise.finite_or_zero(value),
                tf.constant(1.0, f32),
                tf.cast(tf.logical_not(finite), f32),
            )
            weights[name] = self._extra_weights[name]
            clips[name] = None

        # 3.-4. Reduce (on several replicas) and finalise: every term's value.
        op_state_is_term = (
            replicas == 1 and _op_normalization(c.mel_normalization) == c.mel_normalization
        )
        fused_rule = self._fused_rule()
        fin = finalise.finalise_terms(
            stats,
            weights,
            clips,
            mel_valid,
            mel_out,
            old_state,
            replicas=replicas,
            op_state_is_term=op_state_is_term,
            update_state=reference.update_state,
            fused=finalise.finalise_op_applies(
                stats, weights, clips, mel_out, replicas, op_state_is_term, fused_rule
            ),
        )
        names = list(stats)
        new_op_state = fin.new_op_state

        if training:
            rule_state = st.read(rule.RULE_STATE)
            w = rule_state["current_mel_weight"]
            obs = {
                "mel": fin.mel,
                "other": fin.other,
                "finite": fin.finite,
                "has_valid": fin.has_valid,
                "running_mean": fin.running_mean,
                "window_variance": fin.window_variance,
                "growing": st.gradients_growing.read_value(),
            }
            new_rule, new_w, events = rule.adaptive_weight_step(
                rule_state,
                obs,
                c,
                # use_adaptive_weights=False fixes the weight for good (contract
                # section 4); the switch only acts within adaptive mode.
                st.adaptation_enabled.read_value()
                if c.use_adaptive_weights
                else tf.constant(False),
                fused=fused_rule,
            )
        else:
            w = new_w = st.current_mel_weight.read_value()
        new_w = sg(new_w)

        total, raw = fin.combine(new_w)

        # Reporting (every call) and training state (training calls only).
        vec = [tf.constant(0.0, f32)] * len(terms.TERM_NAMES)
        act = [False] * len(terms.TERM_NAMES)
        for name in names:
            if name in _TERM_INDEX:
                vec[_TERM_INDEX[name]] = fin.values[name]
                act[_TERM_INDEX[name]] = True
        if not tf.executing_eagerly():
            self._active_in_graph[tf.compat.v1.get_default_graph()] = [
                n for n, a in zip(terms.TERM_NAMES, act) if a
            ]
        updates = {
            "last_terms": tf.stack(vec),
            "last_active": tf.constant(act),
            "last_mel_weight": new_w,
            "last_raw_total": raw,
            "has_called": tf.constant(True),
        }
        if training:
            smooth_state, smoothed = rule.smoothing_step(
                st.read(rule.SMOOTHING_STATE),
                raw,
                new_rule["step_count"],
                c,
                fused=fused_rule,
            )
            updates.update(new_rule)
            updates.update(smooth_state)
            updates["op_state"] = new_op_state
            updates["last_smoothed_total"] = smoothed
            updates["all_nonfinite_mel_steps"] = st.all_nonfinite_mel_steps.read_value() + tf.cast(
                fin.all_bad, tf.int64
            )
            if self.verbose:
                self._log_change(events["accepted"], new_rule["step_count"], w, new_w)
        # After the returned total, which waits for every input check: a call
        # refused in a graph leaves the training state as it was. Under XLA,
        # where control dependencies do not order in-place variable updates,
        # the gate does it.
        for name in self._extra_fns:
            updates.setdefault("extra_losses", {})[name] = fin.values[name]
        if terms.in_xla():
            updates = self._gate_on_checks(updates, lengths, mel_out)
        with tf.control_dependencies([total]):
            st.write(updates)
        # get_raw_total_loss() hands this very tensor back while the caller is in the
        # same graph (or eager), so a trainer can differentiate it, as MyXTTS's does.
        self._raw_total_tensor = total
        # Eagerly, what the state said right after this call: a later call from a
        # tf.function, or a checkpoint restore, changes it, and the tensor is stale.
        self._raw_total_stamp = (
            (st.step_count.read_value(), st.last_raw_total.read_value())
            if tf.executing_eagerly()
            else None
        )
        return total

    def _gate_on_checks(self, updates, lengths, mel_out):
        """Under XLA: every written value selected against the variable's old
        value by a flag computed from the outputs of the length checks and the
        mel op (custom calls that may refuse the call). XLA updates variables
        in place, so an ungated write can land before a refusal (and a
        variable's buffer can hold scratch values); gated, no new value can be
        written, and every old one stays live, until those calls have run, so
        a refused call leaves the state as it was."""
        flags = [tf.reduce_min(t) >= -1 for t in lengths.values() if t is not None]
        if mel_out is not None:
            flags.append(mel_out.nonfinite_count >= 0)
        if not flags:
            return updates
        ok = rule.all_of(flags)
        return tf.nest.map_structure(
            lambda value, var: tf.where(ok, value, var.read_value()),
            updates,
            self._state.variables_like(updates),
        )

    def _log_change(self, accepted, step, old, new):
        from myxtts_ops.ops import in_xla_context

        if in_xla_context():
            return

        def _print():
            tf.print("XTTSLoss: step", step, "mel weight", old, "->", new)
            return tf.constant(True)

        tf.cond(accepted, _print, lambda: tf.constant(False))

    # ---------------------------------------------------- gradient norms
    def observe_gradient_norm(self, norm):
        """Record the gradient norm of the step (a scalar, or a list of gradient tensors).

        Call it after computing the gradients of the loss returned by this
        object; the next call uses it. A norm that is not a finite number >= 0
        is ignored (counted in ``nonfinite_gradient_norms``); a list with no
        gradient in it (empty, or all None) records nothing and returns None.
        A list's norm is :func:`myxtts_loss.gradient_norm.global_norm` (float32,
        half-precision gradients squared in float32). Under ``tf.distribute``
        a list of this replica's gradients is summed over the replicas first,
        a scalar is averaged, so every replica records the same value. Returns
        the recorded norm (float32).
        """
        st = self._state
        replicas = _replicas_in_sync()
        if isinstance(norm, (list, tuple)):
            grads = [g for g in norm if g is not None]
            if not grads:
                return None
            if replicas > 1:
                grads = tf.distribute.get_replica_context().all_reduce(
                    tf.distribute.ReduceOp.SUM, grads
                )
            norm = gn.global_norm(grads)
        else:
            try:
                t = tf.convert_to_tensor(norm)
            except (TypeError, ValueError):
                t = None
            if t is None or not (t.dtype.is_floating or t.dtype.is_integer):
                raise ValueError(
                    "observe_gradient_norm(norm) takes a real scalar or a list of gradients, "
                    f"got norm={norm!r}"
                )
            norm = t
        norm = _scalar(norm, "observe_gradient_norm(norm)", "a scalar or a list of gradients")
        if replicas > 1:
            norm = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, norm)
        ring, count, valid = gn.record_norm(
            st.gradient_norms.read_value(), st.gradient_norm_count.read_value(), norm
        )
        st.gradient_norms.assign(ring)
        st.gradient_norm_count.assign(count)
        c = self.config
        st.gradients_growing.assign(
            gn.gradients_growing(
                ring, count, c.adaptive_weight_gradient_growth_factor, c.gradient_norm_threshold
            )
        )
        st.nonfinite_gradient_norms.assign_add(tf.cast(tf.logical_not(valid), tf.int64))
        return norm

    def gradient_norm_history(self):
        """The observed norms still held (oldest first), as a float32 tensor."""
        st = self._state
        return gn.norm_history(st.gradient_norms.read_value(), st.gradient_norm_count.read_value())

    def _gradients_growing(self):
        """Whether the recorded norms say gradients are growing (what the next call uses)."""
        return self._state.gradients_growing.read_value()

    # ------------------------------------------------------------ getters
    def _has_called(self):
        if tf.executing_eagerly():
            return bool(self._state.has_called.numpy())
        return True

    def get_losses(self):
        """A new dict of float32 snapshots of the latest call's unweighted terms
        (keys as in the contract, ``gradient_participation_loss`` always; extra
        terms by their names). Empty before the first call. The latest call's
        active terms are listed; inside a graph, those of the call traced in
        that graph (every registry term in a graph that has not called it)."""
        from myxtts_loss.metrics import latest_terms

        return latest_terms(self)

    def get_weighted_losses(self):
        """A new dict: ``mel_loss`` (weighted), ``mel_weight``, each active term's weighted
        value, ``gradient_participation_loss``, ``raw_total_loss``."""
        from myxtts_loss.metrics import weighted_terms

        return weighted_terms(self)

    def get_raw_total_loss(self):
        """The latest call's raw total: the tensor the call returned (differentiable) when
        read eagerly after an eager call (with no call from a graph and no checkpoint
        restore since) or inside the graph that made the call, else a float32 snapshot;
        None before the first call and after :meth:`reset_stability_state` (eagerly)."""
        if not self._has_called():
            return None
        t = getattr(self, "_raw_total_tensor", None)
        if t is not None:
            if tf.executing_eagerly() and not hasattr(t, "graph"):
                if self._eager_tensor_is_latest():
                    return t
            if (
                not tf.executing_eagerly()
                and getattr(t, "graph", None) is tf.compat.v1.get_default_graph()
            ):
                return t
        return tf.identity(self._state.last_raw_total.read_value())

    def _eager_tensor_is_latest(self):
        """Whether the state still describes the eager call whose tensor is held: no
        call from a graph and no restore since, as far as the step count and the
        raw total's bits tell (a later call or restore that leaves both as they
        were reports this very value)."""
        stamp = getattr(self, "_raw_total_stamp", None)
        if stamp is None:
            return False
        st = self._state
        step, raw = stamp
        return (
            st.step_count.numpy() == step.numpy()
            and st.last_raw_total.numpy().tobytes() == raw.numpy().tobytes()
        )

    def get_smoothed_total_loss(self):
        """The latest training call's smoothed total (contract section 4), reported, never
        differentiated (a validation call leaves it, as it leaves the smoothing state)."""
        if not self._has_called():
            return None
        return tf.identity(self._state.last_smoothed_total.read_value())

    def get_stability_metrics(self):
        """float32 snapshots: running_mel_loss, running_total_loss, loss_variance,
        loss_stability_score, step_count, nonfinite_steps, spike_count,
        smoothed_total_loss, all_nonfinite_mel_steps, spike_reference_total,
        mel_window_variance (:func:`myxtts_loss.metrics.stability_metrics`)."""
        from myxtts_loss.metrics import stability_metrics

        return stability_metrics(self)

    def get_adaptive_weight_metrics(self):
        """float32 snapshots: current/previous/base mel weight, steps_since_weight_change,
        consecutive_stable_steps, weight_adjustment_enabled, avg_gradient_norm,
        weight_changes, rejected_changes."""
        from myxtts_loss.metrics import adaptive_metrics

        return adaptive_metrics(self)

    # ------------------------------------------------------------ controls
    def disable_adaptive_weights(self):
        """No further weight changes; the mel weight returns to the base weight."""
        st = self._state
        st.adaptation_enabled.assign(False)
        st.current_mel_weight.assign(float(self.config.mel_loss_weight))
        st.consecutive_stable_steps.assign(0)
        _LOG.info(
            "XTTSLoss: adaptive mel weight disabled (weight back to %s)",
            self.config.mel_loss_weight,
        )

    def enable_adaptive_weights(self):
        """Resume adaptation (ValueError if the base weight is outside the bounds). On a
        loss built with ``use_adaptive_weights=False`` only the switch is set (as the
        original does), with a warning: the weight stays fixed there, and its base may
        lie outside the bounds."""
        if self.config.use_adaptive_weights:
            self.config.check_base_weight_in_bounds()
        self._state.adaptation_enabled.assign(True)
        if not self.config.use_adaptive_weights:
            _LOG.warning(
                "XTTSLoss: enable_adaptive_weights() on a loss built with "
                "use_adaptive_weights=False: the switch is set, but the mel weight stays "
                "%s (build the loss with use_adaptive_weights=True to adapt it)",
                self.config.mel_loss_weight,
            )
            return
        _LOG.info("XTTSLoss: adaptive mel weight enabled")

    def reset_stability_state(self):
        """Every counter, history, statistic, weight and latest value back to its initial
        value; the enabled/disabled switch is kept (a manual disable survives a reset)."""
        self._state.reset()
        self._raw_total_tensor = None
        self._raw_total_stamp = None
        self._warned_all_nonfinite = 0

    # ---------------------------------------------------- serialization
    def get_config(self):
        cfg = {
            "name": self.name,
            "reduction": self.reduction,
            "implementation": self.implementation,
            "verbose": self.verbose,
        }
        cfg.update(self.config.to_dict())
        if self._extra_specs:
            extras = {}
            for term, (fn, weight) in self._extra_specs.items():
                try:
                    if getattr(fn, "__name__", "") == "<lambda>":
                        raise TypeError("a lambda cannot be deserialised safely")
                    serialized = keras.saving.serialize_keras_object(fn)
                    keras.saving.deserialize_keras_object(serialized)
                except Exception as exc:  # noqa: BLE001 - any failure means "not serialisable"
                    raise ValueError(
                        f"XTTSLoss.get_config: extra loss {term!r} ({fn!r}) is not a serialisable "
                        "Keras object; register it with @keras.saving.register_keras_serializable "
                        f"(or use a keras.losses.Loss), or do not serialise this loss ({exc})"
                    ) from None
                extras[term] = {"fn": serialized, "weight": weight}
            cfg["extra_losses"] = extras
        return cfg

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        extras = config.pop("extra_losses", None) or {}
        config["extra_losses"] = {
            term: (keras.saving.deserialize_keras_object(spec["fn"]), spec["weight"])
            for term, spec in extras.items()
        }
        return cls(**config)

    # --------------------------------------------------- non-finite warning
    def _warn_all_nonfinite(self, count):
        """Python-side warning the first time (and when it grows) that whole mel batches were
        non-finite (their mel term is 0: nothing to learn from them)."""
        if count > self._warned_all_nonfinite:
            if self._warned_all_nonfinite == 0:
                warnings.warn(
                    f"XTTSLoss {self.name!r}: {count} step(s) had a mel batch whose valid values "
                    "were all non-finite; the mel term of those steps is 0 (see "
                    "get_stability_metrics()['all_nonfinite_mel_steps']). Check the data/model "
                    "outputs.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._warned_all_nonfinite = count
