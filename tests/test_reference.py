"""The ``masked_mel_loss`` contract battery, run against both implementations
-- the pure-TF reference (``myxtts_ops.reference``) and the fused op
(``myxtts_ops.masked_mel_loss``) -- through the ``impl`` fixture, and checked
against the independent float64 NumPy oracle (``tests/oracle.py``).
Fused-only tests live in ``test_fused_op.py``.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

import oracle
from conftest import DTYPES, NP_DTYPES, assert_close, assert_grad_close, tol
from myxtts_ops import state as st
from myxtts_ops.state import STATE_SIZE, read_state
from myxtts_ops.types import LOSS_TYPES
from myxtts_ops.types import NORMALIZATIONS as NORMS


def _implementation(name):
    import myxtts_ops
    from myxtts_ops import reference

    return {"reference": reference.masked_mel_loss, "fused": myxtts_ops.masked_mel_loss}[name]


@pytest.fixture(params=["reference", "fused"])
def impl(request):
    """Each test of the battery runs once per implementation."""
    return _implementation(request.param)


TF_DTYPES = {
    "float16": tf.float16,
    "bfloat16": tf.bfloat16,
    "float32": tf.float32,
    "float64": tf.float64,
}


def _call(fn, y_true, y_pred, lengths=None, state=None, **kw):
    out = fn(
        tf.constant(y_true),
        tf.constant(y_pred),
        None if lengths is None else tf.constant(lengths),
        None if state is None else tf.constant(state, tf.float64),
        **kw,
    )
    return out


def _out_dtype(dtype):
    return np.float64 if dtype == "float64" else np.float32


def _check_forward(out, ref, dtype, state_in=None, valid_count=None, what=""):
    t = tol(dtype)
    assert out.loss.dtype == tf.as_dtype(_out_dtype(dtype)), what
    assert out.per_sample.dtype == tf.as_dtype(_out_dtype(dtype)), what
    assert out.nonfinite_count.dtype == tf.int64, what
    assert out.state.dtype == tf.float64, what
    assert out.loss.shape == [], what
    assert out.state.shape == [STATE_SIZE], what
    assert_close(out.loss, ref["loss"], t["rtol"], t["atol"], f"loss {what}")
    assert_close(out.per_sample, ref["per_sample"], t["rtol"], t["atol"], f"per_sample {what}")
    assert int(out.nonfinite_count) == ref["nonfinite_count"], what
    # State vs the oracle's state: same up to the rounding of the loss (one
    # float32 ulp per loss, amplified in the window variance); the tight check
    # is the next one.
    if dtype == "float64":
        assert_close(out.state, ref["state"], 1e-10, 1e-12, f"state {what}")
    else:
        assert_close(out.state, ref["state"], 1e-5, 1e-9, f"state {what}")
    # State vs the oracle's update fed with the loss the op actually returned:
    # equal up to float64 rounding.
    if valid_count is not None:
        expected = oracle.next_state(state_in, float(out.loss), ref["nonfinite_count"], valid_count)
        assert_close(out.state, expected, 1e-13, 1e-15, f"state (exact loss) {what}")


def _valid_count(y_true, lengths):
    b, t, m = y_true.shape
    return (t * b if lengths is None else int(np.sum(lengths))) * m


SHAPES_LENGTHS = [
    ((1, 1, 1), "full"),
    ((1, 1, 1), None),
    ((1, 1, 1), [0]),
    ((3, 7, 5), "random"),
    ((2, 9, 1), "random"),
    ((5, 13, 17), "random"),
    ((4, 6, 80), None),
    ((3, 4, 3), [0, 0, 0]),
]


# ---------------------------------------------------------------------------
# Forward against the oracle.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("shape,lengths", SHAPES_LENGTHS, ids=lambda v: str(v).replace(" ", ""))
def test_forward_matches_oracle(impl, inputs, dtype, loss_type, normalization, shape, lengths):
    y_true, y_pred, lens = inputs(shape, dtype, lengths=lengths, ties=2)
    delta = 0.75 if loss_type == "huber" else 1.0  # float32-representable
    kw = dict(loss_type=loss_type, huber_delta=delta, normalization=normalization)
    out = _call(impl, y_true, y_pred, lens, **kw)
    ref = oracle.forward(y_true, y_pred, lens, None, **kw)
    _check_forward(out, ref, dtype, None, _valid_count(y_true, lens), f"{dtype} {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("normalization", NORMS)
def test_nonfinite_valid_and_padding(impl, inputs, dtype, loss_type, normalization):
    shape = (4, 11, 6)
    lens = [11, 5, 0, 8]
    y_true, y_pred, lens = inputs(
        shape, dtype, lengths=lens, nonfinite_valid=7, nonfinite_padding=9
    )
    kw = dict(loss_type=loss_type, normalization=normalization)
    out = _call(impl, y_true, y_pred, lens, **kw)
    ref = oracle.forward(y_true, y_pred, lens, None, **kw)
    assert ref["nonfinite_count"] == 7
    _check_forward(out, ref, dtype, None, _valid_count(y_true, lens))
    assert np.isfinite(out.loss.numpy()) and np.all(np.isfinite(out.per_sample.numpy()))
    # Not a clean step: only steps and nonfinite_steps move.
    s = read_state(out.state)
    assert float(s["steps"]) == 1 and float(s["nonfinite_steps"]) == 1
    assert float(s["clean_steps"]) == 0 and float(s["running_mean"]) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_never_influences(impl, inputs, dtype):
    """Whatever the padding holds (NaN, Inf, huge values), outputs are bitwise unchanged."""
    shape = (3, 10, 7)
    lens = np.array([4, 10, 0], np.int64)
    y_true, y_pred, _ = inputs(shape, dtype, lengths=lens)
    pad = np.arange(10)[None, :, None] >= lens[:, None, None]
    pad = np.broadcast_to(pad, shape)
    outs = []
    for fill in (0.0, np.nan, np.inf, -np.inf, 1e4):
        yt, yp = y_true.copy(), y_pred.copy()
        yt[pad] = fill
        yp[pad] = -fill if np.isfinite(fill) else fill
        outs.append(_call(impl, yt, yp, lens, loss_type="huber"))
    for o in outs[1:]:
        for a, b in zip(o, outs[0]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(outs[0].nonfinite_count) == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lengths_int32_int64_none_agree(impl, inputs, dtype):
    y_true, y_pred, _ = inputs((3, 8, 5), dtype, lengths="full")
    full = np.full([3], 8)
    a = _call(impl, y_true, y_pred, full.astype(np.int32))
    b = _call(impl, y_true, y_pred, full.astype(np.int64))
    c = _call(impl, y_true, y_pred, None)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
        np.testing.assert_array_equal(x.numpy(), z.numpy())


def test_normalizations_differ_as_specified(impl):
    # Sample 0: 1 frame with |d| = 1; sample 1: 3 frames with |d| = 3.
    y_true = np.zeros((2, 3, 1), np.float64)
    y_pred = np.array([[[1.0], [9.0], [9.0]], [[3.0], [3.0], [-3.0]]])
    lens = np.array([1, 3], np.int32)
    ps = _call(impl, y_true, y_pred, lens, normalization="per_sample")
    gl = _call(impl, y_true, y_pred, lens, normalization="global")
    np.testing.assert_allclose(ps.per_sample.numpy(), [1.0, 3.0])
    np.testing.assert_allclose(gl.per_sample.numpy(), [1.0, 3.0])
    assert float(ps.loss) == pytest.approx(2.0, rel=1e-15)
    assert float(gl.loss) == pytest.approx(10.0 / 4.0, rel=1e-15)


def test_huber_values(impl):
    y_true = np.zeros((1, 1, 4), np.float32)
    y_pred = np.array([[[0.5, -2.0, 1.0, 0.0]]], np.float32)
    out = _call(impl, y_true, y_pred, None, loss_type="huber", huber_delta=1.0)
    # 0.125, 1.5, 0.5, 0 -> mean 0.53125
    assert float(out.loss) == pytest.approx(0.53125, rel=1e-7)
    out = _call(impl, y_true, y_pred, None, loss_type="huber", huber_delta=3.0)
    assert float(out.loss) == pytest.approx((0.125 + 2.0 + 0.5) / 4, rel=1e-7)


# ---------------------------------------------------------------------------
# Running statistics.
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_state_evolution(impl, rng, inputs, dtype):
    shape = (3, 6, 4)
    state = None
    state_np = None
    # 14 steps: more than the 10-slot window; some non-finite and empty steps.
    for step in range(14):
        nonfinite = 1 if step in (3, 9) else 0
        lengths = [0, 0, 0] if step == 5 else "random"
        scale = float(rng.uniform(0.2, 3.0))
        y_true, y_pred, lens = inputs(
            shape, dtype, lengths=lengths, nonfinite_valid=nonfinite, scale=scale
        )
        out = _call(impl, y_true, y_pred, lens, state_np)
        ref = oracle.forward(y_true, y_pred, lens, state_np)
        _check_forward(out, ref, dtype, state_np, _valid_count(y_true, lens), f"step {step}")
        state = out.state
        state_np = state.numpy()
    s = {k: float(v) for k, v in read_state(state).items()}
    assert s["steps"] == 14
    assert s["nonfinite_steps"] == 2
    assert s["clean_steps"] == 11
    assert s["window_count"] == 10
    ring = state_np[st.RING_START : st.RING_START + st.WINDOW_SIZE]
    assert s["window_mean"] == pytest.approx(np.mean(ring), rel=1e-12)
    assert s["window_variance"] == pytest.approx(np.var(ring), rel=1e-9, abs=1e-15)
    assert state_np[st.RING_HEAD] == 1.0  # 11 clean losses: slot 0 rewritten, next is 1


def test_state_window_counts_filled_slots_only(impl):
    y_true = np.zeros((1, 2, 2), np.float64)
    state = None
    losses = [1.0, 3.0, 2.0]
    for i, v in enumerate(losses):
        out = _call(impl, y_true, np.full((1, 2, 2), v), None, state)
        state = out.state.numpy()
        s = read_state(state)
        window = losses[: i + 1]
        assert float(s["window_count"]) == i + 1
        assert float(s["window_mean"]) == pytest.approx(np.mean(window), rel=1e-15)
        assert float(s["window_variance"]) == pytest.approx(np.var(window), rel=1e-12)
        assert float(s["last_loss"]) == v
    # decay = min(k/1000, .99): running mean after 3 steps
    rm = 0.0
    for k, v in enumerate(losses, start=1):
        d = min(k / 1000.0, 0.99)
        rm = d * rm + (1 - d) * v
    assert float(read_state(state)["running_mean"]) == pytest.approx(rm, rel=1e-15)


def test_state_input_not_mutated(impl):
    s0 = tf.Variable(tf.zeros([STATE_SIZE], tf.float64))
    y = np.ones((1, 2, 2), np.float32)
    out = impl(tf.constant(y), tf.constant(y * 2), state=s0)
    assert np.all(s0.numpy() == 0)
    assert float(read_state(out.state)["steps"]) == 1


# ---------------------------------------------------------------------------
# Gradients.
def _grads(fn, y_true, y_pred, lens, g, g_b, **kw):
    yt = tf.constant(y_true)
    yp = tf.constant(y_pred)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([yt, yp])
        out = fn(yt, yp, None if lens is None else tf.constant(lens), **kw)
        target = out.loss * tf.constant(g, out.loss.dtype) + tf.reduce_sum(
            out.per_sample * tf.constant(g_b, out.per_sample.dtype)
        )
    gt, gp = tape.gradient(target, [yt, yp])
    return gt, gp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("normalization", NORMS)
def test_gradients_match_oracle(impl, rng, inputs, dtype, loss_type, normalization):
    shape = (4, 9, 5)
    lens = [9, 0, 4, 7]
    y_true, y_pred, lens = inputs(
        shape, dtype, lengths=lens, nonfinite_valid=5, nonfinite_padding=5, ties=4
    )
    g = float(rng.uniform(0.5, 2.0))
    g_b = rng.uniform(-1, 1, size=4).astype(_out_dtype(dtype))
    kw = dict(loss_type=loss_type, huber_delta=0.625, normalization=normalization)
    gt, gp = _grads(impl, y_true, y_pred, lens, g, g_b, **kw)
    assert gt.dtype == TF_DTYPES[dtype] and gp.dtype == TF_DTYPES[dtype]
    egt, egp = oracle.backward(y_true, y_pred, lens, grad_loss=g, grad_per_sample=g_b, **kw)
    gt, gp = gt.numpy().astype(np.float64), gp.numpy().astype(np.float64)
    assert np.all(np.isfinite(gt)) and np.all(np.isfinite(gp))
    terms = oracle.coefficient_terms(y_true, y_pred, lens, grad_loss=g, grad_per_sample=g_b, **kw)
    assert_grad_close(gp, egp, dtype, "grad y_pred", terms)
    assert_grad_close(gt, egt, dtype, "grad y_true", terms)
    # Exactly zero at padding, non-finite elements and (L1) ties.
    zero = egp == 0
    assert np.all(gp[zero] == 0) and np.all(gt[zero] == 0)
    pad = np.arange(9)[None, :, None] >= np.asarray(lens)[:, None, None]
    assert np.all(gp[np.broadcast_to(pad, shape)] == 0)
    bad = ~(np.isfinite(y_true.astype(np.float64)) & np.isfinite(y_pred.astype(np.float64)))
    assert np.all(gp[bad] == 0) and np.all(gt[bad] == 0)


def test_l1_gradient_sign_zero_at_tie(impl):
    y_true = np.array([[[1.0, 2.0, 3.0]]], np.float32)
    y_pred = np.array([[[1.0, 2.5, 2.0]]], np.float32)
    _, gp = _grads(impl, y_true, y_pred, None, 1.0, np.zeros(1, np.float32))
    np.testing.assert_allclose(gp.numpy(), [[[0.0, 1 / 3, -1 / 3]]], rtol=1e-6)


def test_no_gradient_through_state_and_counts(impl):
    y = tf.constant(np.random.default_rng(0).normal(size=(2, 3, 4)))
    with tf.GradientTape() as tape:
        tape.watch(y)
        out = impl(y, y * 2.0)
        target = tf.reduce_sum(out.state)
    grad = tape.gradient(target, y)
    assert grad is None or np.all(grad.numpy() == 0)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("normalization", NORMS)
def test_compute_gradient_float64(impl, rng, loss_type, normalization):
    shape = (3, 4, 3)
    lens = tf.constant([4, 2, 0], tf.int64)
    y_true = rng.standard_normal(shape)
    # Keep d away from the kinks (0 for L1, +-delta for Huber).
    mag = rng.choice([0.3, 0.6, 1.7, 2.4], size=shape)
    y_pred = y_true + mag * rng.choice([-1.0, 1.0], size=shape)
    y_true[2, 3, 1] = np.nan  # padding NaN
    kw = dict(loss_type=loss_type, huber_delta=1.0, normalization=normalization)

    def f(yp):
        out = impl(tf.constant(y_true), yp, lens, **kw)
        return out.loss + 0.5 * tf.reduce_sum(
            out.per_sample * tf.constant([1.0, -2.0, 3.0], tf.float64)
        )

    theo, num = tf.test.compute_gradient(f, [tf.constant(y_pred)], delta=1e-4)
    np.testing.assert_allclose(theo[0], num[0], rtol=1e-6, atol=1e-8)
    assert np.any(theo[0] != 0)


# ---------------------------------------------------------------------------
# tf.function / XLA.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_type,normalization", [("l1", "per_sample"), ("huber", "global")])
def test_jit_compile_same_numbers(impl, inputs, dtype, loss_type, normalization):
    shape = (3, 12, 8)
    y_true, y_pred, lens = inputs(
        shape, dtype, lengths=[12, 3, 0], nonfinite_valid=2, nonfinite_padding=4
    )
    kw = dict(loss_type=loss_type, normalization=normalization)
    state = np.zeros(STATE_SIZE)
    state[st.CLEAN_STEPS] = 3.0
    state[st.WINDOW_COUNT] = 3.0
    state[st.RING_HEAD] = 3.0
    state[st.RING_START : st.RING_START + 3] = [0.5, 0.7, 0.6]

    def run(yt, yp, ln, s):
        with tf.GradientTape() as tape:
            tape.watch(yp)
            out = impl(yt, yp, ln, s, **kw)
        return out, tape.gradient(out.loss, yp)

    args = (tf.constant(y_true), tf.constant(y_pred), tf.constant(lens), tf.constant(state))
    eager_out, eager_g = run(*args)
    fn_out, fn_g = tf.function(run)(*args)
    xla_out, xla_g = tf.function(run, jit_compile=True)(*args)
    for other in (fn_out, xla_out):
        np.testing.assert_allclose(other.loss.numpy(), eager_out.loss.numpy(), rtol=2e-6)
        np.testing.assert_allclose(
            other.per_sample.numpy(), eager_out.per_sample.numpy(), rtol=2e-6
        )
        assert int(other.nonfinite_count) == int(eager_out.nonfinite_count)
        np.testing.assert_allclose(other.state.numpy(), eager_out.state.numpy(), rtol=2e-6)
    for g in (fn_g, xla_g):
        np.testing.assert_allclose(
            g.numpy().astype(np.float64),
            eager_g.numpy().astype(np.float64),
            rtol=1e-2 if dtype in ("float16", "bfloat16") else 2e-6,
        )


def test_clean_state_update_under_jit(impl, inputs):
    y_true, y_pred, lens = inputs((2, 5, 3), "float32", lengths=[5, 2])
    fn = tf.function(impl, jit_compile=True)
    state = np.zeros(STATE_SIZE)
    for _ in range(12):
        out = fn(tf.constant(y_true), tf.constant(y_pred), tf.constant(lens), tf.constant(state))
        expected = oracle.next_state(state, float(out.loss), 0, 7 * 3)
        np.testing.assert_allclose(out.state.numpy(), expected, rtol=1e-13)
        state = out.state.numpy()


def test_tf_function_dynamic_shapes(impl, inputs):
    sig = [
        tf.TensorSpec([None, None, None], tf.float32),
        tf.TensorSpec([None, None, None], tf.float32),
        tf.TensorSpec([None], tf.int32),
    ]
    fn = tf.function(lambda a, b, c: impl(a, b, c), input_signature=sig)
    for shape in [(2, 5, 3), (4, 1, 7), (1, 9, 2)]:
        y_true, y_pred, lens = inputs(shape, "float32")
        out = fn(y_true, y_pred, lens)
        ref = oracle.forward(y_true, y_pred, lens)
        assert_close(out.loss, ref["loss"], 1e-5, 1e-6)
        assert_close(out.per_sample, ref["per_sample"], 1e-5, 1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="lengths"):
        fn(
            np.zeros((2, 3, 1), np.float32),
            np.zeros((2, 3, 1), np.float32),
            np.array([1, 4], np.int32),
        )


# ---------------------------------------------------------------------------
# Empty tensors.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3, 2), (2, 0, 3), (2, 3, 0), (0, 0, 0)])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_empty_tensors(impl, dtype, shape, with_lengths):
    y = np.zeros(shape, NP_DTYPES[dtype])
    lens = np.full([shape[0]], shape[1], np.int32) if with_lengths else None
    yt, yp = tf.constant(y), tf.constant(y)
    with tf.GradientTape() as tape:
        tape.watch(yp)
        out = impl(yt, yp, None if lens is None else tf.constant(lens))
    assert float(out.loss) == 0.0
    assert out.per_sample.shape == [shape[0]]
    assert np.all(out.per_sample.numpy() == 0)
    assert int(out.nonfinite_count) == 0
    s = read_state(out.state)
    assert float(s["steps"]) == 1 and float(s["clean_steps"]) == 0
    g = tape.gradient(out.loss, yp)
    assert g is None or (g.shape == shape and np.all(g.numpy() == 0))


# ---------------------------------------------------------------------------
# Bad input.
def _y(shape=(2, 3, 4), dtype=np.float32):
    return tf.constant(np.ones(shape, dtype))


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(loss_type="l2"), r"loss_type.*'l2'"),
        (dict(loss_type="L1"), r"loss_type.*'L1'"),
        (dict(normalization="mean"), r"normalization.*'mean'"),
        (dict(huber_delta=0.0), r"huber_delta.*0"),
        (dict(huber_delta=-1.5), r"huber_delta.*-1\.5"),
        (dict(huber_delta=float("nan")), r"huber_delta.*nan"),
        (dict(loss_type="huber", huber_delta=-2), r"huber_delta.*-2"),
    ],
)
def test_bad_arguments(impl, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        impl(_y(), _y(), **kwargs)


@pytest.mark.parametrize(
    "args,pattern",
    [
        ((_y((2, 3)), _y((2, 3))), r"y_true.*rank|rank.*y_true"),
        ((_y((2, 3, 4, 1)), _y((2, 3, 4, 1))), r"rank"),
        ((_y((2, 3, 4)), _y((2, 3, 5))), r"shape.*\[2, 3, 4\].*\[2, 3, 5\]"),
        ((_y(dtype=np.float32), _y(dtype=np.float64)), r"dtype.*float32.*float64"),
        ((tf.ones((2, 3, 4), tf.int32), tf.ones((2, 3, 4), tf.int32)), r"y_true.*int32"),
        ((_y(), _y(), tf.constant([1.0, 2.0])), r"lengths.*float32"),
        ((_y(), _y(), tf.constant([1, 2, 3])), r"lengths.*\[3\]"),
        ((_y(), _y(), tf.constant([[1, 2]])), r"lengths.*\[1, 2\]"),
        ((_y(), _y(), None, tf.zeros([5], tf.float64)), r"state.*\[5\]"),
        ((_y(), _y(), None, tf.zeros([STATE_SIZE], tf.float32)), r"state.*float32"),
    ],
    ids=[
        "rank2",
        "rank4",
        "shape",
        "dtype",
        "int_dtype",
        "lengths_dtype",
        "lengths_len",
        "lengths_rank",
        "state_shape",
        "state_dtype",
    ],
)
def test_bad_tensors(impl, args, pattern):
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=pattern):
        impl(*args)


@pytest.mark.parametrize("bad_value,index", [(-37, 1), (4, 2), (1000, 0)])
@pytest.mark.parametrize("ldtype", [np.int32, np.int64])
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_bad_lengths_runtime(impl, bad_value, index, ldtype, mode):
    lens = np.array([3, 2, 1], ldtype)
    lens[index] = bad_value
    fn = impl if mode == "eager" else tf.function(impl)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        out = fn(_y((3, 3, 2)), _y((3, 3, 2)), tf.constant(lens))
        out.loss.numpy()
    msg = str(info.value)
    # "lengths[i] = v" (the op), or the reference's Assert, which prints the
    # same pieces as separate tensors ("lengths[] [1] [] =] [-37]" in a graph).
    shown = rf"lengths\[[^0-9-]*{index}[^0-9-]*{re.escape(str(bad_value))}(?!\d)"
    assert re.search(shown, msg), msg


@pytest.mark.parametrize("lens", [[7, 2], [2, -2], [7, -2]])
def test_xla_bad_lengths(impl, lens):
    """Under XLA the fused op refuses out-of-range lengths (its custom call checks
    them on the host); the reference's Assert is a no-op there, so a bad length
    makes its sample's value and the loss NaN, with a zero gradient and a
    non-finite step in the state (as for the fused op where it has no XLA path
    and falls back to the reference): never a plausible number."""
    y_true = tf.zeros((3, 3, 2), tf.float32)
    y_pred = tf.ones((3, 3, 2), tf.float32)
    lengths = tf.constant(lens + [3], tf.int32)

    @tf.function(jit_compile=True)
    def fn(y_true, y_pred, lengths):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            out = impl(y_true, y_pred, lengths)
        return out, tape.gradient(out.loss, y_pred)

    from myxtts_ops import _loader

    if impl is _implementation("fused") and _loader.xla_unavailable_reason() is None:
        bad = next(i for i, n in enumerate(lens) if not 0 <= n <= 3)
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=rf"lengths\[{bad}\] = {lens[bad]} is outside \[0, 3\]",
        ):
            fn(y_true, y_pred, lengths)
        return
    out, grad = fn(y_true, y_pred, lengths)
    expected = [np.nan if not 0 <= n <= 3 else 1.0 for n in lens] + [1.0]
    np.testing.assert_array_equal(out.per_sample.numpy(), expected)
    assert np.isnan(float(out.loss))
    assert int(read_state(out.state)["nonfinite_steps"]) == 1
    np.testing.assert_array_equal(grad.numpy(), np.zeros((3, 3, 2), np.float32))


@pytest.mark.parametrize("sizes", [[1], [3, 1, 2]])
def test_xla_lengths_of_another_size(impl, sizes):
    """Lengths that are not [batch], in a function traced with unknown sizes:
    the fused op refuses them; the reference, whose size assertion XLA
    compiles away, makes every sample and the loss NaN instead of
    broadcasting them into a plausible number."""
    y_true = tf.zeros((2, 3, 2), tf.float32)
    y_pred = tf.ones((2, 3, 2), tf.float32)
    mel = tf.TensorSpec([None, None, None])
    fn = tf.function(
        lambda t, p, n: impl(t, p, n),
        jit_compile=True,
        input_signature=[mel, mel, tf.TensorSpec([None], tf.int32)],
    )
    from myxtts_ops import _loader

    lengths = tf.constant(sizes, tf.int32)
    if impl is _implementation("fused") and _loader.xla_unavailable_reason() is None:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"lengths must have shape \[2\]"):
            fn(y_true, y_pred, lengths)
        return
    out = fn(y_true, y_pred, lengths)
    assert np.all(np.isnan(out.per_sample.numpy())) and np.isnan(float(out.loss))
    graph = tf.function(lambda t, p, n: impl(t, p, n), input_signature=fn.input_signature)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"lengths must have shape \[batch\]"):
        graph(y_true, y_pred, lengths)


@pytest.mark.parametrize("dtype", DTYPES)
def test_huber_delta_past_the_float_range(impl, dtype):
    """A delta larger than the accumulation type can hold (accepted: it is a
    valid float64) is the quadratic branch for every finite difference, with a
    finite gradient d (the reference's unselected branch was inf * 0 = NaN)."""
    d = np.array([[[2.0, -0.5]]])
    y_pred = tf.constant(d.astype(NP_DTYPES[dtype]))
    y_true = tf.zeros_like(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        out = impl(y_true, y_pred, loss_type="huber", huber_delta=1e300)
    grad = tf.cast(tape.gradient(out.loss, y_pred), tf.float64).numpy()
    np.testing.assert_allclose(float(out.loss), np.mean(0.5 * d * d), rtol=1e-6)
    np.testing.assert_allclose(grad, d / d.size, rtol=1e-2)


def test_empty_batch_with_an_empty_lengths_list(impl):
    """lengths=[] (a Python list) for a batch of 0 is int32, not float32."""
    out = impl(tf.zeros((0, 3, 2)), tf.zeros((0, 3, 2)), [])
    assert float(out.loss) == 0.0 and out.per_sample.shape == [0]


# ---------------------------------------------------------------------------
# Property test over small random shapes (including empty ones).
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as hst  # noqa: E402


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    b=hst.integers(0, 4),
    t=hst.integers(0, 6),
    m=hst.integers(0, 5),
    dtype=hst.sampled_from(DTYPES),
    loss_type=hst.sampled_from(LOSS_TYPES),
    normalization=hst.sampled_from(NORMS),
    use_lengths=hst.booleans(),
    n_bad=hst.integers(0, 3),
    seed=hst.integers(0, 2**31 - 1),
)
def test_property_matches_oracle(
    impl, b, t, m, dtype, loss_type, normalization, use_lengths, n_bad, seed
):
    from conftest import make_inputs

    rng = np.random.default_rng(seed)
    y_true, y_pred, lens = make_inputs(
        rng,
        (b, t, m),
        dtype,
        lengths="random" if use_lengths else None,
        nonfinite_valid=n_bad,
        nonfinite_padding=n_bad,
    )
    kw = dict(loss_type=loss_type, huber_delta=0.5, normalization=normalization)
    out = _call(impl, y_true, y_pred, lens, **kw)
    ref = oracle.forward(y_true, y_pred, lens, None, **kw)
    _check_forward(out, ref, dtype, None, _valid_count(y_true, lens))


@pytest.mark.parametrize("pred_shape", [(1, 3, 2), (2, 1, 2), (2, 3, 1)])
def test_xla_inputs_of_another_shape(impl, pred_shape):
    """y_pred of another shape than y_true, traced with unknown sizes: the fused
    op refuses it; the reference, whose shape assertion XLA compiles away,
    makes every sample and the loss NaN instead of broadcasting the two into
    a plausible number."""
    mel = tf.TensorSpec([None, None, None])
    fn = tf.function(lambda t, p: impl(t, p), jit_compile=True, input_signature=[mel, mel])
    from myxtts_ops import _loader

    y_true = tf.reshape(tf.range(12, dtype=tf.float32), (2, 3, 2))
    y_pred = tf.zeros(pred_shape)
    if impl is _implementation("fused") and _loader.xla_unavailable_reason() is None:
        with pytest.raises(tf.errors.InvalidArgumentError, match="y_pred shape"):
            fn(y_true, y_pred)
        return
    out = fn(y_true, y_pred)
    assert np.all(np.isnan(out.per_sample.numpy())) and np.isnan(float(out.loss))
    graph = tf.function(lambda t, p: impl(t, p), input_signature=fn.input_signature)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must have the same shape"):
        graph(y_true, y_pred)
