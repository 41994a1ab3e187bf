"""The state vector layout has one source, ``csrc/kernels/mel_loss_math.h``:
the installed ``myxtts_ops/_lib/_state_layout.py`` is generated from it, the
Python constants are that module's, and the kernels write where they say."""

import os
import sys

import numpy as np
import pytest

import myxtts_ops
from myxtts_ops import kernels
from myxtts_ops import state as st
from myxtts_ops._lib import _state_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "csrc", "kernels", "mel_loss_math.h")


@pytest.mark.skipif(not os.path.exists(HEADER), reason="needs the source tree's header")
def test_installed_layout_is_generated_from_the_header():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import gen_state_layout
    finally:
        sys.path.pop(0)
    with open(HEADER) as f:
        constants, fields = gen_state_layout.parse_header(f.read())
    assert constants == {k: getattr(_state_layout, k) for k in constants}
    assert fields == _state_layout.PUBLIC_FIELD_NAMES
    with open(_state_layout.__file__) as f:
        assert f.read() == gen_state_layout.render(constants, fields)


def test_python_constants_are_the_generated_ones():
    assert st.STATE_SIZE == _state_layout.SIZE == myxtts_ops.STATE_SIZE == kernels.STATE_SIZE
    assert st.STATE_SIZE == st.RING_START + st.WINDOW_SIZE
    assert [name for name, _ in st.FIELDS] == list(_state_layout.PUBLIC_FIELD_NAMES)
    assert [index for _, index in st.FIELDS] == list(range(len(st.FIELDS)))
    assert not hasattr(kernels, "STATE_FIELDS")


def test_kernels_write_where_the_layout_says():
    """One clean step of loss 2 and one non-finite step, read by index."""
    y = np.zeros((1, 2, 3), np.float32)
    s = kernels.forward(y, y + 2.0)["state"]
    assert s[st.STEPS] == 1 and s[st.CLEAN_STEPS] == 1 and s[st.NONFINITE_STEPS] == 0
    assert s[st.LAST_LOSS] == 2.0 and s[st.RING_START] == 2.0
    assert s[st.RING_HEAD] == 1 and s[st.WINDOW_COUNT] == 1 and s[st.WINDOW_MEAN] == 2.0
    assert s[st.RUNNING_MEAN] == pytest.approx((1 - 1 / st.DECAY_RAMP) * 2.0, rel=1e-15)
    bad = y.copy()
    bad[0, 0, 0] = np.nan
    s2 = kernels.forward(bad, y, None, s)["state"]
    assert s2[st.STEPS] == 2 and s2[st.NONFINITE_STEPS] == 1
    np.testing.assert_array_equal(
        np.delete(s2, [st.STEPS, st.NONFINITE_STEPS]), np.delete(s, [st.STEPS, st.NONFINITE_STEPS])
    )
    named = myxtts_ops.read_state(s)
    assert float(named["last_loss"]) == 2.0 and float(named["window_count"]) == 1


def test_decay_saturates_at_the_generated_constants():
    y = np.zeros((1, 1, 1), np.float32)
    state = np.zeros(st.STATE_SIZE)
    state[st.CLEAN_STEPS] = st.DECAY_RAMP * 2
    state[st.RUNNING_MEAN] = 1.0
    s = kernels.forward(y, y + 3.0, None, state)["state"]
    assert s[st.RUNNING_MEAN] == pytest.approx(st.MAX_DECAY * 1.0 + (1 - st.MAX_DECAY) * 3.0)


def test_read_state_checks_an_unknown_length_when_the_graph_runs():
    import tensorflow as tf

    read = tf.function(myxtts_ops.read_state, input_signature=[tf.TensorSpec([None], tf.float64)])
    state = np.arange(st.STATE_SIZE, dtype=np.float64)
    assert float(read(state)["last_loss"]) == st.LAST_LOSS
    message = rf"state must be a float64 vector of length {st.STATE_SIZE}, got shape"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message + r"\] \[3\]"):
        read(np.zeros(3))
    unknown_rank = tf.function(
        myxtts_ops.read_state, input_signature=[tf.TensorSpec(None, tf.float64)]
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=message + rf"\] \[{st.STATE_SIZE} 1\]"
    ):
        unknown_rank(np.zeros((st.STATE_SIZE, 1)))
    with pytest.raises(ValueError, match="got length 3"):
        myxtts_ops.read_state(np.zeros(3))
