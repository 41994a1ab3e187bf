"""Argument validation shared by the fused op and the pure-TF reference.

Everything here runs at Python/trace time and raises ``ValueError`` whose
message names the offending argument and its value (SPEC 3.5). Checks that
need runtime values (lengths in ``[0, T]``, dynamic shapes) live with each
implementation.
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util

from myxtts_ops import kernels
from myxtts_ops.state import STATE_SIZE
from myxtts_ops.types import LOSS_TYPES, NORMALIZATIONS

SUPPORTED_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
LENGTHS_DTYPES = (tf.int32, tf.int64)


def validate_args(loss_type, huber_delta, normalization):
    """Checks the non-tensor arguments.

    Returns ``(loss_type, huber_delta, normalization)`` with ``huber_delta`` as
    a Python float. Raises ``ValueError`` naming the argument and bad value.
    huber_delta follows the one rule of ``csrc/kernels/mel_loss_checks.h``
    (finite, at least the smallest normal float32; not a bool), checked by the kernels
    module, so Python refuses exactly what the op would.
    """
    if not isinstance(loss_type, str) or loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got loss_type={loss_type!r}")
    if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {NORMALIZATIONS}, got normalization={normalization!r}"
        )
    delta = kernels.check_huber_delta(huber_delta)
    return loss_type, delta, normalization


def state_tensor(state):
    """``state`` as a float64 tensor, refusing every other dtype.

    A tensor keeps its dtype (so a float32 tensor is refused, as in graph
    mode); an array or list must already be float64 (big-endian float64 is
    converted to native order). Raises ``ValueError`` naming the dtype.
    """
    if tf.is_tensor(state) or isinstance(state, tf.Variable):
        tensor = tf.convert_to_tensor(state)
        dtype_name = tensor.dtype.name
    else:
        array = np.asarray(state)
        dtype_name = array.dtype.name
        tensor = None
        if array.dtype.kind == "f" and array.dtype.itemsize == 8:
            tensor = tf.convert_to_tensor(array.astype(np.float64, copy=False))
    if tensor is None or tensor.dtype != tf.float64:
        raise ValueError(f"state must be float64, got state dtype={dtype_name}")
    return tensor


def _dims(shape):
    return shape.as_list() if shape.rank is not None else None


#: The rank each tensor argument must have: name -> (rank, what its axes are).
RANKS = {
    "y_true": (3, "[batch, frames, mels]"),
    "y_pred": (3, "[batch, frames, mels]"),
    "lengths": (1, "[batch]"),
    "state": (1, f"[{STATE_SIZE}]"),
}


def check_static_shapes(y_true, y_pred, lengths=None, state=None):
    """Trace-time checks of the tensor arguments (already tensors).

    ``lengths`` and ``state`` may be None. Only statically known facts are
    checked; unknown dimensions pass (the implementations check them at run
    time).
    """
    if y_true.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            "y_true must be float16, bfloat16, float32 or float64, "
            f"got y_true dtype={y_true.dtype.name}"
        )
    if y_pred.dtype != y_true.dtype:
        raise ValueError(
            "y_true and y_pred must have the same dtype, got "
            f"y_true dtype={y_true.dtype.name} and y_pred dtype={y_pred.dtype.name}"
        )
    for name, t in (("y_true", y_true), ("y_pred", y_pred)):
        rank, axes = RANKS[name]
        if t.shape.rank is not None and t.shape.rank != rank:
            raise ValueError(
                f"{name} must have rank {rank} {axes}, "
                f"got {name} shape={_dims(t.shape)} (rank {t.shape.rank})"
            )
    if not y_true.shape.is_compatible_with(y_pred.shape):
        raise ValueError(
            "y_true and y_pred must have the same shape, got "
            f"y_true shape={_dims(y_true.shape)} and y_pred shape={_dims(y_pred.shape)}"
        )
    batch_shape = y_true.shape.merge_with(y_pred.shape)
    batch = batch_shape[0] if batch_shape.rank is not None else None

    if lengths is not None:
        if lengths.dtype not in LENGTHS_DTYPES:
            raise ValueError(
                f"lengths must be int32 or int64, got lengths dtype={lengths.dtype.name}"
            )
        if lengths.shape.rank is not None and lengths.shape.rank != 1:
            raise ValueError(
                f"lengths must have shape [batch], got lengths shape={_dims(lengths.shape)}"
            )
        if (
            lengths.shape.rank == 1
            and lengths.shape[0] is not None
            and batch is not None
            and lengths.shape[0] != batch
        ):
            raise ValueError(
                f"lengths must have shape [batch]=[{batch}], "
                f"got lengths shape={_dims(lengths.shape)}"
            )

    if state is not None:
        if state.dtype != tf.float64:
            raise ValueError(f"state must be float64, got state dtype={state.dtype.name}")
        if state.shape.rank is not None and (
            state.shape.rank != 1 or (state.shape[0] is not None and state.shape[0] != STATE_SIZE)
        ):
            raise ValueError(
                f"state must have shape [{STATE_SIZE}], got state shape={_dims(state.shape)}"
            )


def in_xla_context():
    """True while tracing a function that XLA will compile (jit_compile=True)."""
    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def ensure_ranks(**tensors):
    """Each named tensor (None passes through) checked for its rank in
    :data:`RANKS` when its rank is unknown at trace time (static ranks are
    :func:`check_static_shapes`' job). In a graph an assertion names the
    argument and its shape; under XLA, where assertions compile to nothing,
    ``tf.ensure_shape`` fails the compilation naming it (only there: in a
    graph its shape function fails first, naming the function's argument).
    Returns the tensors in the order given."""
    xla = in_xla_context()
    out = []
    for name, t in tensors.items():
        if t is not None and t.shape.rank is None:
            rank, axes = RANKS[name]
            if xla:
                t = tf.ensure_shape(tf.identity(t, name=name), [None] * rank)
            else:
                check = tf.debugging.Assert(
                    tf.equal(tf.rank(t), rank),
                    [f"{name} must have rank {rank} {axes}, got {name} shape", tf.shape(t)],
                    name=f"{name}_rank",
                    summarize=8,
                )
                with tf.control_dependencies([check]):
                    t = tf.identity(t)
        out.append(t)
    return out


# Largest length any implementation accepts: lengths travel to the GPU as int32.
MAX_LENGTH = 2**31 - 1


def lengths_tensor(lengths):
    """``lengths`` as a tensor (None stays None), for the op and the reference alike."""
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)) and len(lengths) == 0:
        # An empty Python list would otherwise become float32. (No dtype_hint:
        # it would silently turn float arrays into ints instead of rejecting them.)
        return tf.zeros([0], tf.int32)
    return tf.convert_to_tensor(lengths)


def float_length_flaws(lengths):
    """Bool mask of float ``lengths`` that are not whole numbers in ``[0, MAX_LENGTH]``."""
    whole = tf.logical_and(tf.math.is_finite(lengths), tf.equal(tf.math.floor(lengths), lengths))
    in_range = tf.logical_and(lengths >= 0, tf.cast(lengths, tf.float64) <= float(MAX_LENGTH))
    return tf.logical_not(tf.logical_and(whole, in_range))


def integral_lengths(lengths, name="lengths"):
    """Lengths as an integer tensor, accepting whole-number float lengths.

    Keras casts every input to float32, so frame counts often arrive as
    floats. Integer tensors are returned as they are; float ones are
    converted to int64 after a run-time check that every value is a whole
    number in ``[0, MAX_LENGTH]`` -- otherwise ``InvalidArgumentError`` names
    the index and the value the caller passed (``nan``, ``1e+10``, ``5.9``),
    never the number a bare cast would make of it (-2147483648). Under XLA
    the check compiles to nothing, like every TF assertion. Other dtypes
    raise ``ValueError``.
    """
    tensor = tf.convert_to_tensor(lengths)
    if tensor.dtype.is_integer:
        return tensor
    if not tensor.dtype.is_floating:
        raise ValueError(
            f"{name} must be integers (or whole-number floats), got {name} dtype="
            f"{tensor.dtype.name}"
        )
    flat = tf.reshape(tensor, [-1])
    bad = float_length_flaws(flat)
    # A sentinel keeps argmax/gather defined for an empty vector.
    index = tf.argmax(tf.concat([tf.cast(bad, tf.int32), [0]], 0), output_type=tf.int64)
    value = tf.gather(tf.concat([flat, tf.zeros([1], flat.dtype)], 0), index)
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [f"{name} must be whole numbers in [0, {MAX_LENGTH}]; not at index", index, "value", value],
        name=f"check_{name}",
    )
    with tf.control_dependencies([check]):
        return tf.cast(tensor, tf.int64)
