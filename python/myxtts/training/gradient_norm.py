"""Feed each training step's gradient norm to an :class:`XTTSLoss` during ``model.fit``.

Keras computes the gradients inside ``Model.train_step`` and hands them to
``optimizer.apply(grads, variables)``. :func:`feed_gradient_norm` wraps that
method on the optimizer instance (the innermost one when Keras wraps it in a
``LossScaleOptimizer`` for mixed precision, so the norm is of the *unscaled*
gradients, and steps skipped for non-finite scaled gradients report nothing),
computes ``tf.linalg.global_norm`` of the gradients in the graph and calls
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

__all__ = ["feed_gradient_norm", "innermost_optimizer"]

_ATTR = "_myxtts_gradient_norm_feed"


def innermost_optimizer(optimizer):
    """The optimizer that finally applies unscaled gradients (unwraps LossScaleOptimizer)."""
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    return optimizer


def feed_gradient_norm(optimizer, loss_fn):
    """Make ``optimizer`` report ``global_norm(grads)`` to ``loss_fn`` on every apply.

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
