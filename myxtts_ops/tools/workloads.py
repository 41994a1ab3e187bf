"""What the profiler runs: synthetic mel batches and one step per (impl, mode).

Implementations:

* ``fused``     -- :func:`myxtts_ops.masked_mel_loss` inside ``tf.function``;
* ``reference`` -- :func:`myxtts_ops.reference.masked_mel_loss` inside ``tf.function``;
* ``xla``       -- the reference inside ``tf.function(jit_compile=True)``;
* ``fused_xla`` -- :func:`myxtts_ops.masked_mel_loss` inside
  ``tf.function(jit_compile=True)``: the fused kernels as XLA custom calls
  where the installed op provides them, else the op's own fallback to the
  reference (the record's ``xla_custom_calls`` tells which ran).

Modes:

* ``forward``          -- the loss and its outputs;
* ``forward_backward`` -- the loss plus its gradient with respect to ``y_pred``
  (taken with a ``GradientTape`` inside the ``tf.function``; the gradient is
  returned, so nothing is pruned);
* ``xtts_step``        -- a full ``XTTSLoss`` call (adaptive-weight decision
  included) plus its gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .loss_side import xtts_loss_class
from .measure import DTYPE_SIZES
from .tf_import import import_tensorflow

IMPLS = ("fused", "reference", "xla", "fused_xla")
MODES = ("forward", "forward_backward", "xtts_step")
DTYPES = tuple(DTYPE_SIZES)
#: Implementations compiled with XLA (``jit_compile=True``).
XLA_IMPLS = frozenset({"xla", "fused_xla"})
#: Implementations that call the fused op (and need its library).
FUSED_IMPLS = frozenset({"fused", "fused_xla"})
#: Text tokens and attention heads of the default MyXTTS model (``--terms``).
DEFAULT_TOKENS = 150
DEFAULT_HEADS = 4


def input_sets_for(
    batch: int, frames: int, mels: int, dtype: str, rotate_bytes: int, max_sets: int = 16
) -> int:
    """How many input copies make y_true + y_pred total at least ``rotate_bytes``."""
    per_set = max(2 * batch * frames * mels * DTYPE_SIZES[dtype], 1)
    return int(min(max(-(-rotate_bytes // per_set), 1), max_sets))


def make_batch(
    batch: int, frames: int, mels: int, dtype: str, seed: int = 0, data_seed: int | None = None
):
    """Synthetic log-mel-like ``(y_true, y_pred, lengths)``, lengths in [T/2, T].

    ``seed`` draws the lengths, ``data_seed`` (default: ``seed``) the mels.
    """
    tf = import_tensorflow()
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(frames // 2, 1), frames + 1, size=(batch,), dtype=np.int64)
    lengths = lengths.astype(np.int32)
    if data_seed is not None:
        rng = np.random.default_rng([seed, data_seed])
    y_true = rng.standard_normal((batch, frames, mels), dtype=np.float32) * 2.0 - 4.0
    y_pred = y_true + rng.standard_normal((batch, frames, mels), dtype=np.float32) * 0.5
    tf_dtype = tf.as_dtype(dtype)
    # tf.identity runs on the device in scope, so the mels end up there (a
    # same-dtype cast may hand back the host tensor, which every call would copy).
    yt = tf.identity(tf.cast(tf.constant(y_true), tf_dtype))
    yp = tf.identity(tf.cast(tf.constant(y_pred), tf_dtype))
    ln = tf.constant(lengths)
    return yt, yp, ln


def _mel_loss(impl: str) -> Callable:
    if impl in FUSED_IMPLS:
        import myxtts_ops

        return myxtts_ops.masked_mel_loss
    from myxtts_ops import reference

    return reference.masked_mel_loss


def build_step(impl: str, mode: str):
    """A ``tf.function`` running one step of ``mode`` with ``impl``.

    Its arguments are ``(y_true, y_pred, lengths)``; every output is returned so
    that no part of the computation is pruned.
    """
    tf = import_tensorflow()

    if mode == "forward":
        loss_fn = _mel_loss(impl)

        def step(y_true, y_pred, lengths):
            out = loss_fn(y_true, y_pred, lengths)
            return out.loss, out.per_sample, out.nonfinite_count, out.state

    elif mode == "forward_backward":
        loss_fn = _mel_loss(impl)

        def step(y_true, y_pred, lengths):
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                out = loss_fn(y_true, y_pred, lengths)
            grad = tape.gradient(out.loss, y_pred)
            return out.loss, out.nonfinite_count, out.state, grad

    elif mode == "xtts_step":
        xtts = xtts_loss_class()(implementation="fused" if impl in FUSED_IMPLS else "reference")

        def step(y_true, y_pred, lengths):
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                loss = xtts({"mel_target": y_true, "mel_lengths": lengths}, {"mel_output": y_pred})
            grad = tape.gradient(loss, y_pred)
            return loss, grad

        step.xtts_loss = xtts  # keep the loss object (and its variables) alive
    else:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")

    return tf.function(step, jit_compile=impl in XLA_IMPLS)
