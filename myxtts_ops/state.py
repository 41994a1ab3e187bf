"""Layout of the running-statistics state vector returned by the fused op.

The indices mirror ``csrc/kernels/mel_loss_math.h`` (namespace ``state``);
``tests/test_state_layout.py`` checks that both agree.
"""

import numpy as np

STEPS = 0
CLEAN_STEPS = 1
NONFINITE_STEPS = 2
RUNNING_MEAN = 3
WINDOW_COUNT = 4
WINDOW_MEAN = 5
WINDOW_VARIANCE = 6
LAST_LOSS = 7
RING_HEAD = 8
RING_START = 9
WINDOW_SIZE = 10
STATE_SIZE = RING_START + WINDOW_SIZE

DECAY_RAMP = 1000.0
MAX_DECAY = 0.99

#: Public fields returned by :func:`read_state`, in state order.
FIELDS = (
    ("steps", STEPS),
    ("clean_steps", CLEAN_STEPS),
    ("nonfinite_steps", NONFINITE_STEPS),
    ("running_mean", RUNNING_MEAN),
    ("window_count", WINDOW_COUNT),
    ("window_mean", WINDOW_MEAN),
    ("window_variance", WINDOW_VARIANCE),
    ("last_loss", LAST_LOSS),
)


def initial_state():
    """A fresh state (all statistics zero) as a float64 NumPy array."""
    return np.zeros([STATE_SIZE], dtype=np.float64)


def read_state(state):
    """Named float64 scalars of a state vector (a tensor or an array).

    Works eagerly and inside ``tf.function`` (returns tensors there).
    """
    import tensorflow as tf

    state = tf.convert_to_tensor(state, dtype=tf.float64)
    if state.shape.rank is not None and state.shape.rank != 1:
        raise ValueError(
            f"state must be a float64 vector of length {STATE_SIZE}, got shape {state.shape}"
        )
    if state.shape[0] is not None and state.shape[0] != STATE_SIZE:
        raise ValueError(
            f"state must be a float64 vector of length {STATE_SIZE}, got length {state.shape[0]}"
        )
    return {name: state[index] for name, index in FIELDS}
