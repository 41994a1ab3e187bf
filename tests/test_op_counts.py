"""Graph-size claims as bounds: the ops XTTSLoss adds to a training step.

BENCHMARKS.md gives the graph ops the whole MyXTTS loss (every term's
bookkeeping, the adaptive rule, smoothing, the per-term values get_losses()
reports, state writes) adds to the fused op and its state update when only the
mel input is given. Measured on this tree (TF 2.21, shapes [4, 50, 8]):

* ``implementation="reference"`` (the rule, the smoothing and the
  finalisation in TF ops): 211 top-level work ops and 245 with the bodies of
  its cond branch (207 and 241 when last recorded here; 234 and 268 before
  the growing-gradients flag was stored when a norm is recorded and one
  replica's statistics stopped going through a stack and its slices);
* ``"fused"``: 56, with no cond, since the terms' finalisation runs as two ops
  on the CPU (myxtts_loss.finalise; 62 while their inputs were wrapped in
  stop_gradient ops they do not need, 123 before the ops, and 207 / 241
  before the rule and the smoothing became one op each).

The bounds leave about 10% headroom; a change that needs more ops per step
must raise them here, on purpose.
"""

import pytest
import tensorflow as tf

import myxtts_ops
from myxtts_ops.tools.loss_side import xtts_loss_class
from myxtts_ops.tools.measure import count_ops

#: implementation -> (top-level, with cond bodies) bounds; measured 211 / 245
#: and 56 / 56 (see the module docstring).
MAX_ADDED_OPS = {"reference": (232, 270), "fused": (68, 68)}


def _fused_available():
    try:
        myxtts_ops.load_ops()
        return True
    except Exception:  # noqa: BLE001 - the reference is still measured
        return False


IMPLS = ["reference"] + (["fused"] if _fused_available() else [])


def _added_ops(impl):
    """(top-level, nested) work ops an XTTSLoss call adds to the op + state update."""
    loss_fn = xtts_loss_class()(implementation=impl)
    spec = tf.TensorSpec([4, 50, 8], tf.float32)
    lens = tf.TensorSpec([4], tf.int32)
    state = tf.Variable(tf.zeros([myxtts_ops.STATE_SIZE], tf.float64))
    op = myxtts_ops.masked_mel_loss if impl == "fused" else myxtts_ops.reference.masked_mel_loss

    def op_only(yt, yp, ln):
        out = op(yt, yp, ln, state.read_value())
        state.assign(out.state)
        return out.loss

    def with_loss(yt, yp, ln):
        return loss_fn(yt, yp, mel_lengths=ln)

    base = tf.function(op_only).get_concrete_function(spec, spec, lens)
    full = tf.function(with_loss).get_concrete_function(spec, spec, lens)
    return (
        count_ops(full, nested=False) - count_ops(base, nested=False),
        count_ops(full) - count_ops(base),
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_xtts_loss_ops_per_step_bound(impl):
    top_level, nested = _added_ops(impl)
    print(f"XTTSLoss ({impl}) adds {top_level} top-level / {nested} nested ops per step")
    max_top_level, max_nested = MAX_ADDED_OPS[impl]
    assert 0 < top_level <= max_top_level
    assert top_level <= nested <= max_nested
