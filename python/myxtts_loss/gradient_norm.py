"""Gradient-norm tracker of XTTSLoss (pure functions) and its feed from ``model.fit``.

:func:`record_norm` and :func:`gradients_growing` are the tracker: pure
functions of a ring buffer of the last norms (no variables).

Feed each training step's gradient norm to an :class:`~myxtts_loss.XTTSLoss` during ``model.fit``.

Keras computes the gradients inside ``Model.train_step`` and hands them to
``optimizer.apply(grads, variables)``. :func:`feed_gradient_norm` wraps that
method on the optimizer instance (the innermost one when Keras wraps it in a
``LossScaleOptimizer`` for mixed precision, so the norm is of the *unscaled*
gradients, and steps skipped for non-finite scaled gradients report nothing),
computes :func:`global_norm` of the gradients in the graph and calls
``loss_fn.observe_gradient_norm`` before applying them. Nothing leaves the
graph. The optimizer's class, configuration and checkpoint are unchanged.

Under ``tf.distribute`` (more than one replica) the gradients handed to
``apply`` are each replica's local ones (Keras all-reduces them later);
``observe_gradient_norm`` receives the list and sums it over the replicas
first (one extra all-reduce of the gradients per step), so every replica
records the norm of the global batch's gradient, as a single device would.

In a custom ``tf.GradientTape`` loop call ``loss_fn.observe_gradient_norm``
yourself (it also accepts the list of gradients).
"""

import tensorflow as tf

__all__ = [
    "GRADIENT_NORM_HISTORY",
    "RING_SIZE",
    "global_norm",
    "record_norm",
    "gradients_growing",
    "norm_history",
    "feed_gradient_norm",
    "innermost_optimizer",
]

#: How many previous gradient norms the "growing gradients" test compares the
#: newest one with (SPEC 4.1: "the mean of the previous (up to 10) observed norms").
GRADIENT_NORM_HISTORY = 10
RING_SIZE = GRADIENT_NORM_HISTORY + 1  # newest + up to 10 previous


def global_norm(grads):
    """The float32 L2 norm of ``grads`` (tensors or ``tf.IndexedSlices``, float
    dtypes, mixed allowed). Half-precision gradients are squared in float32
    (float16's squares overflow once the norm passes 256, which is exactly the
    growth the tracker watches for) and the per-tensor sums add in float64.
    If a square overflows (float32 past about 1.8e19), the sums are taken
    again with each tensor divided by its largest magnitude, so an exploding
    but finite gradient reports its norm instead of inf; a non-finite
    gradient still gives a non-finite norm."""
    tensors = []
    for g in grads:
        values = g.values if isinstance(g, tf.IndexedSlices) else tf.convert_to_tensor(g)
        if values.dtype in (tf.float16, tf.bfloat16):
            values = tf.cast(values, tf.float32)
        tensors.append(values)

    def total(scaled):
        out = tf.constant(0.0, tf.float64)
        for v in tensors:
            if scaled:
                peak = tf.maximum(tf.reduce_max(tf.abs(v)), 0.0)  # an empty max is -inf
                unit = tf.where(peak > 0, peak, tf.ones_like(peak))  # all zeros, or empty
                square = tf.square(tf.cast(unit, tf.float64))
                part = tf.cast(tf.reduce_sum(tf.square(v / unit)), tf.float64) * square
                # An inf element stays inf (inf / inf would make it NaN).
                out += tf.where(tf.math.is_finite(peak), part, tf.cast(peak, tf.float64))
            else:
                out += tf.cast(tf.reduce_sum(tf.square(v)), tf.float64)
        return out

    plain = total(scaled=False)
    # The rescaled pass only runs on a step whose plain sum overflowed.
    squared = tf.cond(tf.math.is_finite(plain), lambda: plain, lambda: total(scaled=True))
    return tf.cast(tf.sqrt(squared), tf.float32)


def record_norm(ring, count, norm):
    """(ring [RING_SIZE] float32, count int64, norm) -> (ring, count, valid).

    A norm that is not a finite number >= 0 leaves the ring and the count
    unchanged (a negative one would pull the mean of the previous norms
    down and make "growing" fire on an ordinary step).
    """
    norm = tf.cast(tf.reshape(norm, []), tf.float32)
    valid = tf.logical_and(tf.math.is_finite(norm), norm >= 0.0)
    slot = tf.math.floormod(count, RING_SIZE)
    updated = tf.where(tf.equal(tf.range(RING_SIZE, dtype=count.dtype), slot), norm, ring)
    return tf.where(valid, updated, ring), count + tf.cast(valid, count.dtype), valid


def gradients_growing(ring, count, growth_factor, threshold):
    """Whether the newest norm exceeds both ``growth_factor`` x the mean of the
    previous (up to 10) norms and ``threshold`` (False with fewer than 2 norms).

    Slots not yet written hold 0, so the sum of the ring is the sum of the held norms.
    """
    newest = tf.gather(ring, tf.math.floormod(count + (RING_SIZE - 1), RING_SIZE))
    n_prev = tf.clip_by_value(count - 1, 1, RING_SIZE - 1)
    prev_mean = (tf.reduce_sum(ring) - newest) / tf.cast(n_prev, tf.float32)
    return tf.logical_and(
        count >= 2, tf.logical_and(newest > growth_factor * prev_mean, newest > threshold)
    )


def norm_history(ring, count):
    """The norms still held, oldest first."""
    n = tf.minimum(count, RING_SIZE)
    idx = tf.math.floormod(count - n + tf.range(n, dtype=count.dtype), RING_SIZE)
    return tf.gather(ring, idx)


_ATTR = "_myxtts_gradient_norm_feed"


def innermost_optimizer(optimizer):
    """The optimizer that finally applies unscaled gradients (unwraps LossScaleOptimizer)."""
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    return optimizer


def feed_gradient_norm(optimizer, loss_fn):
    """Make ``optimizer`` report :func:`global_norm` of its gradients to ``loss_fn`` on
    every apply.

    Idempotent; calling it again with another loss re-targets the feed.
    Returns ``optimizer``.
    """
    if not hasattr(loss_fn, "observe_gradient_norm"):
        raise ValueError(f"loss_fn must have observe_gradient_norm(), got {loss_fn!r}")
    target = innermost_optimizer(optimizer)
    if not hasattr(target, "apply"):
        raise ValueError(f"optimizer has no apply(grads, variables) method: {optimizer!r}")
    feed = getattr(target, _ATTR, None)
    if isinstance(feed, _Feed):
        feed.loss_fn = loss_fn
        return optimizer
    original_apply = target.apply
    feed = _Feed(loss_fn)

    def apply(grads, trainable_variables=None):
        grads = list(grads)
        present = [g for g in grads if g is not None]
        if present:
            # The list form: under tf.distribute observe_gradient_norm sums the
            # replicas' gradients first, so the norm is the global batch's.
            feed.loss_fn.observe_gradient_norm(present)
        return original_apply(grads, trainable_variables)

    target.apply = apply
    setattr(target, _ATTR, feed)
    return optimizer


class _Feed:
    """Which loss an optimizer reports to (a plain object: Keras' attribute
    tracking would copy a dict)."""

    __slots__ = ("loss_fn",)

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn
