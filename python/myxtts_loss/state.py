"""XTTSLoss state: its variables (create, read, write, reset) and the settings record.

Every piece of mutable state is a non-trainable ``tf.Variable`` created once
here; :meth:`LossState.read` returns a dict of tensors and
:meth:`LossState.write` assigns one back, so the decisions
(:mod:`myxtts_loss.rule`) never touch a variable.

Checkpoints (issue 14, item 3): the state is only meaningful for the settings
it was produced with. :class:`SettingsRecord` saves those settings with the
state, and restoring a checkpoint whose settings differ in a way that would
change the meaning of the state (adaptation on/off, base weight, weight
bounds) raises ``ValueError`` naming the setting, both values and how to fix
it. Checkpoints written before the record existed restore without the check.
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.trackable import base as trackable_base

from myxtts_loss import gradient_norm, rule

__all__ = ["LossState", "SettingsRecord", "CHECKED_SETTINGS"]


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


class LossState(tf.Module):
    """All mutable state of one XTTSLoss (every attribute listed in ``names`` is a tf.Variable)."""

    def __init__(self, base_weight, state_size, enabled, term_names):
        super().__init__(name="xtts_loss_state")
        spec = {"op_state": (tf.float64, np.zeros([state_size], np.float64))}
        spec.update(rule.RULE_STATE)
        spec.update(rule.SMOOTHING_STATE)
        spec.update(
            {
                "gradient_norms": (tf.float32, np.zeros([gradient_norm.RING_SIZE], np.float32)),
                "gradient_norm_count": (tf.int64, 0),
                "nonfinite_gradient_norms": (tf.int64, 0),
                # gradient_norm.gradients_growing of the ring, updated with it when a
                # norm is recorded (a call reads one flag, not the ring's dozen ops).
                "gradients_growing": (tf.bool, False),
                # Steps whose mel term had valid elements but none finite (its value is then 0).
                "all_nonfinite_mel_steps": (tf.int64, 0),
                # Latest call: unweighted term values in registry order, effective mel
                # weight and raw total (what the getters report); the smoothed total
                # of the latest training call (a validation call has none).
                "last_terms": (tf.float32, np.zeros([len(term_names)], np.float32)),
                "last_active": (tf.bool, np.zeros([len(term_names)], bool)),
                "last_mel_weight": (tf.float32, "base"),
                "last_raw_total": (tf.float32, 0.0),
                "last_smoothed_total": (tf.float32, 0.0),
                "has_called": (tf.bool, False),
            }
        )
        self.names = tuple(spec)
        #: What only reports the latest call (written by every call, validation included).
        self.reporting_names = (
            "last_terms",
            "last_active",
            "last_mel_weight",
            "last_raw_total",
            "has_called",
        )
        self._initial = {}
        for name, (dtype, init) in spec.items():
            value = float(base_weight) if isinstance(init, str) and init == "base" else init
            self._initial[name] = (value, dtype)
            setattr(self, name, _variable(value, dtype, name))
        self.adaptation_enabled = _variable(bool(enabled), tf.bool, "adaptation_enabled")
        self.extra_losses = {}

    def add_extra(self, name):
        var = _variable(0.0, tf.float32, f"last_{name}")
        self.extra_losses[name] = var
        return var

    def read(self, names):
        return {n: getattr(self, n).read_value() for n in names}

    def variables_like(self, values):
        """The variables of ``values``' names, in its structure (``"extra_losses"``:
        a dict ``term -> tensor`` for the extra terms' variables)."""
        return {
            n: {t: self.extra_losses[t] for t in v} if n == "extra_losses" else getattr(self, n)
            for n, v in values.items()
        }

    def write(self, values):
        """Assign every ``name -> tensor`` of ``values`` (structured as
        :meth:`variables_like` reads it); returns the assign ops."""
        return tf.nest.flatten(
            tf.nest.map_structure(lambda var, v: var.assign(v), self.variables_like(values), values)
        )

    def reset(self):
        """Every variable back to its initial value (the enabled switch excepted)."""
        for name, (value, dtype) in self._initial.items():
            getattr(self, name).assign(tf.constant(value, dtype))
        for var in self.extra_losses.values():
            var.assign(0.0)


#: Settings whose change makes a saved state inconsistent: name -> how to read it from a config.
CHECKED_SETTINGS = (
    "use_adaptive_weights",
    "mel_loss_weight",
    "adaptive_weight_min_weight",
    "adaptive_weight_max_weight",
)


class SettingsRecord(trackable_base.Trackable):
    """Saves :data:`CHECKED_SETTINGS` with the state; refuses to restore a mismatch."""

    def __init__(self, config):
        self._config = config

    def _values(self):
        return np.array([float(getattr(self._config, n)) for n in CHECKED_SETTINGS], np.float64)

    def _serialize_to_tensors(self):
        return {"settings": tf.constant(self._values())}

    def _restore_from_tensors(self, restored_tensors):
        saved = restored_tensors["settings"]
        mine = self._values()
        if tf.is_symbolic_tensor(saved):
            return self._restore_check_op(saved, mine)
        saved = np.asarray(saved.numpy() if hasattr(saved, "numpy") else saved, np.float64)
        if saved.shape != mine.shape:
            raise ValueError(
                f"the checkpoint's XTTSLoss settings record has {saved.shape[0]} entries, "
                f"expected {mine.shape[0]} ({', '.join(CHECKED_SETTINGS)})"
            )
        for name, a, b in zip(CHECKED_SETTINGS, saved, mine):
            if a != b:
                shown_a = bool(a) if name == "use_adaptive_weights" else float(a)
                shown_b = bool(b) if name == "use_adaptive_weights" else float(b)
                raise ValueError(
                    f"cannot restore XTTSLoss state saved with {name}={shown_a!r} into a loss "
                    f"built with {name}={shown_b!r}: the adaptive weight, its bounds and the "
                    f"on/off switch would disagree with the settings. Build the loss with "
                    f"{name}={shown_a!r} to resume, or restore without the loss "
                    "(then its state starts fresh)."
                )
        return tf.no_op()

    def _restore_check_op(self, saved, mine):
        """The same refusal as an op, for a restore traced into a graph (a
        SavedModel's restore function, written by ``tf.saved_model.save``)."""
        saved = tf.reshape(tf.cast(saved, tf.float64), [-1])
        same = tf.cond(
            tf.equal(tf.size(saved), mine.size),
            lambda: tf.reduce_all(tf.equal(saved, tf.constant(mine))),
            lambda: tf.constant(False),
        )
        return tf.debugging.Assert(
            same,
            [
                "cannot restore XTTSLoss state saved with other settings than this loss's "
                f"({', '.join(CHECKED_SETTINGS)}); saved:",
                saved,
                "this loss:",
                tf.constant(mine),
            ],
        )
