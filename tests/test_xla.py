"""The fused op inside XLA (``jit_compile=True``): one typed-FFI custom call
forward and one backward (csrc/tf/mel_loss_xla.cc, csrc/xla/mel_loss_ffi.cc).

Outputs and gradients under XLA must be bitwise equal to the same op outside
XLA (both run the same CPU kernels with the same fixed-order reduction), bad
input must be refused with the OpKernel's messages, and the path must work
whichever comes first in a process: the library load or the first XLA
compilation.
"""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import myxtts_ops
from child_env import child_env
from conftest import DTYPES
from myxtts_ops import state as st
from myxtts_ops.state import STATE_SIZE


def _xla_available():
    try:
        from myxtts_ops import _loader

        return _loader.xla_unavailable_reason() is None
    except Exception:  # noqa: BLE001 - any load failure means "not built"
        return False


pytestmark = pytest.mark.skipif(not _xla_available(), reason="fused op has no XLA path here")

FORWARD_TARGET = 'custom_call_target="myxtts_ops_masked_mel_loss"'
BACKWARD_TARGET = 'custom_call_target="myxtts_ops_masked_mel_loss_grad"'
OUT_DTYPE = {"float64": np.float64}


def _bits(x):
    """Bytes of a tensor/array: bitwise comparison that also matches NaN payloads."""
    a = np.ascontiguousarray(np.asarray(x))
    return a.dtype, a.shape, a.tobytes()


def _state():
    s = np.zeros(STATE_SIZE)
    s[st.STEPS] = 7.0
    s[st.CLEAN_STEPS] = 5.0
    s[st.RUNNING_MEAN] = 0.8
    s[st.WINDOW_COUNT] = 3.0
    s[st.RING_HEAD] = 3.0
    s[st.RING_START : st.RING_START + 3] = [0.5, 0.9, 0.7]
    return s


def _step(grads, **kw):
    """Forward + requested gradients of ``g * loss + sum(g_b * per_sample)``."""

    def step(yt, yp, lens, state, g, g_b):
        sources = {"both": [yt, yp], "y_pred": [yp]}[grads]
        with tf.GradientTape() as tape:
            tape.watch(sources)
            out = myxtts_ops.masked_mel_loss(yt, yp, lens, state, return_counts=True, **kw)
            target = out.loss * g + tf.reduce_sum(out.per_sample * g_b)
        return out, tape.gradient(target, sources)

    return step


def _args(rng, inputs, shape, dtype, lengths, lengths_dtype=np.int32):
    y_true, y_pred, lens = inputs(
        shape,
        dtype,
        lengths=lengths,
        lengths_dtype=lengths_dtype,
        nonfinite_valid=3,
        nonfinite_padding=4,
        ties=3,
    )
    out_dtype = OUT_DTYPE.get(dtype, np.float32)
    g = tf.constant(rng.uniform(0.5, 2.0), out_dtype)
    g_b = tf.constant(rng.uniform(-1, 1, shape[0]).astype(out_dtype))
    lens_t = None if lens is None else tf.constant(lens)
    return (tf.constant(y_true), tf.constant(y_pred), lens_t, tf.constant(_state()), g, g_b)


def _assert_bitwise(xla, ref):
    (out_x, grads_x), (out_r, grads_r) = xla, ref
    for name in out_r._fields:  # active_count and valid_count included
        assert _bits(getattr(out_x, name)) == _bits(getattr(out_r, name)), name
    assert len(grads_x) == len(grads_r)
    for i, (a, b) in enumerate(zip(grads_x, grads_r)):
        assert _bits(a) == _bits(b), f"gradient {i}"


def _optimized_hlo(fn, *args):
    return fn.experimental_get_compiler_ir(*args)(stage="optimized_hlo")


# ---------------------------------------------------------------------------
# Values: bitwise equal to the op outside XLA.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", ["int32", "int64", "absent"])
@pytest.mark.parametrize("loss_type,normalization", [("l1", "per_sample"), ("huber", "global")])
def test_bitwise_equal_to_op_outside_xla(rng, inputs, dtype, lengths, loss_type, normalization):
    # Odd shape; 3 samples so "random" lengths hold both 0 and T.
    shape = (3, 13, 7)
    lens = None if lengths == "absent" else "random"
    lens_dtype = np.int64 if lengths == "int64" else np.int32
    args = _args(rng, inputs, shape, dtype, lens, lens_dtype)
    if lens is not None:
        assert {0, 13} <= set(args[2].numpy().tolist())
    step = _step("both", loss_type=loss_type, huber_delta=0.7, normalization=normalization)
    xla = tf.function(step, jit_compile=True)
    _assert_bitwise(xla(*args), tf.function(step)(*args))
    assert FORWARD_TARGET in _optimized_hlo(xla, *args)


@pytest.mark.parametrize("loss_type,normalization", [("l1", "global"), ("huber", "per_sample")])
@pytest.mark.parametrize("grads", ["both", "y_pred"])
def test_bitwise_other_modes_and_multichunk(rng, inputs, loss_type, normalization, grads):
    # 2 x 300 x 80: several CPU work units per sample, split over the pool.
    args = _args(rng, inputs, (2, 300, 80), "float32", [300, 171])
    step = _step(grads, loss_type=loss_type, huber_delta=2.5, normalization=normalization)
    _assert_bitwise(tf.function(step, jit_compile=True)(*args), tf.function(step)(*args))


def test_empty_inputs(rng):
    for shape in [(0, 4, 3), (2, 0, 3), (2, 4, 0)]:
        args = (
            tf.zeros(shape),
            tf.ones(shape),
            tf.zeros([shape[0]], tf.int32),
            tf.constant(_state()),
            tf.constant(1.0),
            tf.ones([shape[0]]),
        )
        step = _step("both")
        _assert_bitwise(tf.function(step, jit_compile=True)(*args), tf.function(step)(*args))


def test_state_chain_under_xla(rng, inputs):
    """The state threads through compiled steps exactly as through the op outside XLA."""
    y_true, y_pred, lens = inputs((2, 9, 4), "float32", lengths=[9, 4])
    fn = lambda s: myxtts_ops.masked_mel_loss(y_true, y_pred * s[0], lens, s[1])  # noqa: E731
    xla, plain = tf.function(fn, jit_compile=True), tf.function(fn)
    sx = sp = tf.zeros([STATE_SIZE], tf.float64)
    for i in range(13):
        scale = tf.constant(1.0 + 0.1 * i)
        sx, sp = xla((scale, sx)).state, plain((scale, sp)).state
        assert _bits(sx) == _bits(sp)


# ---------------------------------------------------------------------------
# Lowering: one custom call each way, none of the reference's ops.
def test_optimized_hlo_one_custom_call_each_way(rng, inputs):
    args = _args(rng, inputs, (4, 11, 5), "float32", "random")
    xla = tf.function(_step("both"), jit_compile=True)
    hlo = _optimized_hlo(xla, *args)
    assert hlo.count(FORWARD_TARGET) == 1, hlo
    assert hlo.count(BACKWARD_TARGET) == 1, hlo
    assert hlo.count("custom-call(") == 2, hlo
    assert "API_VERSION_TYPED_FFI" in hlo
    # The reference's masking and reductions would show up as these.
    for op in ("is-finite", "reduce(", "abs(", "compare("):
        assert op not in hlo, op
    # Its XLA-compiled counterpart does contain them (so the check can fail).
    from myxtts_ops import reference

    def ref_step(yt, yp, lens, state, g, g_b):
        with tf.GradientTape() as tape:
            tape.watch([yt, yp])
            out = reference.masked_mel_loss(yt, yp, lens, state)
            target = out.loss * g + tf.reduce_sum(out.per_sample * g_b)
        return out, tape.gradient(target, [yt, yp])

    ref_hlo = _optimized_hlo(tf.function(ref_step, jit_compile=True), *args)
    assert "custom-call(" not in ref_hlo and "is-finite" in ref_hlo and "reduce(" in ref_hlo


def test_grad_y_true_skipped_when_not_needed(rng, inputs):
    """tf2xla reports every output as used; the tape's knowledge that y_true
    needs no gradient (as in Keras fit) reaches the custom call instead."""
    args = _args(rng, inputs, (2, 6, 3), "float32", "random")
    hlo = _optimized_hlo(tf.function(_step("y_pred"), jit_compile=True), *args)
    assert "want_grad_y_true = false" in hlo and hlo.count(BACKWARD_TARGET) == 1
    hlo = _optimized_hlo(tf.function(_step("both"), jit_compile=True), *args)
    assert "want_grad_y_true = true" in hlo


def test_huber_delta_attribute_exact(inputs):
    """huber_delta reaches the float64 kernel bit-exactly (17 significant digits)."""
    y_true, y_pred, lens = inputs((2, 7, 3), "float64", lengths=[7, 3])
    delta = 0.1 + 0.2  # 0.30000000000000004
    fn = lambda a, b, c: myxtts_ops.masked_mel_loss(
        a,
        b,
        c,
        loss_type="huber",  # noqa: E731
        huber_delta=delta,
    )
    args = (tf.constant(y_true), tf.constant(y_pred), tf.constant(lens))
    x, p = tf.function(fn, jit_compile=True)(*args), tf.function(fn)(*args)
    assert _bits(x.loss) == _bits(p.loss) and _bits(x.per_sample) == _bits(p.per_sample)


# ---------------------------------------------------------------------------
# Bad input: same errors as the OpKernel.
def _error_message(fn, *args):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        out = fn(*args)
        tf.nest.map_structure(lambda t: t.numpy(), out)
    return info.value.message


def _op_message(message):
    """The OpKernel/XLA-kernel message without TF's node suffixes."""
    return message.split(" [Op:")[0].split("\n")[0].split("{{")[0].strip()


@pytest.mark.parametrize("lengths,bad", [([3, 9], "lengths[1] = 9"), ([-2, 4], "lengths[0] = -2")])
@pytest.mark.parametrize("lengths_dtype", [tf.int32, tf.int64])
def test_bad_lengths_error(lengths, bad, lengths_dtype):
    fn = lambda a, b, c: myxtts_ops.masked_mel_loss(a, b, c)  # noqa: E731
    args = (tf.zeros([2, 5, 3]), tf.ones([2, 5, 3]), tf.constant(lengths, lengths_dtype))
    xla_msg = _error_message(tf.function(fn, jit_compile=True), *args)
    op_msg = _error_message(tf.function(fn), *args)
    assert f"{bad} is outside [0, 5] (frames of y_true)" in xla_msg
    assert _op_message(op_msg) in xla_msg


_DYNAMIC = [
    tf.TensorSpec(None, tf.float32),
    tf.TensorSpec(None, tf.float32),
    tf.TensorSpec(None, tf.int32),
    tf.TensorSpec(None, tf.float64),
]


@pytest.mark.parametrize(
    "shapes,expected",
    [
        (
            ([2, 3, 4], [1, 3, 4], [2], [STATE_SIZE]),
            "y_pred shape [1,3,4] does not match y_true shape [2,3,4]",
        ),
        (
            ([2, 3, 4], [2, 3, 4], [1], [STATE_SIZE]),
            "lengths must have shape [2] (one length per sample), got shape [1]",
        ),
        (
            ([2, 3, 4], [2, 3, 4], [2], [STATE_SIZE, 1]),
            f"state must have shape [{STATE_SIZE}] (myxtts_ops.STATE_SIZE), got shape [{STATE_SIZE},1]",
        ),
        (
            ([2, 12], [2, 12], [2], [STATE_SIZE]),
            "y_true must have rank 3 [batch, frames, mels], got shape [2,12]",
        ),
    ],
)
def test_compile_time_shape_errors(shapes, expected):
    """Shapes only known when XLA compiles (no static shape at trace time) are
    refused by the XLA kernel with the OpKernel's message, not broadcast."""
    fn = lambda a, b, c, s: myxtts_ops.masked_mel_loss(a, b, c, s)  # noqa: E731
    args = (
        tf.ones(shapes[0]),
        tf.zeros(shapes[1]),
        tf.fill(shapes[2], 3),
        tf.zeros(shapes[3], tf.float64),
    )
    xla_msg = _error_message(tf.function(fn, input_signature=_DYNAMIC, jit_compile=True), *args)
    op_msg = _error_message(tf.function(fn, input_signature=_DYNAMIC), *args)
    assert expected in xla_msg
    assert expected in op_msg


def test_dynamic_shape_error_names_the_input():
    """A size XLA knows only at run time (tf.boolean_mask) is refused at compile
    time with the input's name and what to do, not an operand index."""

    @tf.function(jit_compile=True)
    def fn(a, b, keep):
        return myxtts_ops.masked_mel_loss(
            tf.boolean_mask(a, keep), tf.boolean_mask(b, keep), on_xla="error"
        ).loss

    msg = _error_message(fn, tf.ones((2, 5, 3)), tf.zeros((2, 5, 3)), tf.constant([True, False]))
    assert "needs static shapes, got y_true with the dynamic shape f32[<=2,5,3]" in msg
    assert "outside jit_compile=True" in msg


def test_check_lengths_refuses_dynamic_shapes_by_its_own_name():
    """The length check's static-shape error names the check and its input,
    not the mel op."""
    from myxtts_ops.ops import check_lengths

    @tf.function(jit_compile=True)
    def fn(n, keep):
        return check_lengths(tf.boolean_mask(n, keep), "text_lengths", limit=7)

    msg = _error_message(fn, tf.constant([1, 2]), tf.constant([True, False]))
    assert "the length check under XLA needs static shapes, got text_lengths" in msg
    assert "masked_mel_loss" not in msg


# ---------------------------------------------------------------------------
# Load order: library loaded before, or after, the first XLA compilation.
_LOAD_ORDER_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    order = sys.argv[1]
    if order == "after":
        # The process's first XLA compilation builds TF's table of XLA kernels.
        assert float(tf.function(lambda x: x * 2.0, jit_compile=True)(tf.constant(1.5))) == 3.0
    import myxtts_ops

    myxtts_ops.load_ops()

    def step(a, b, c):
        with tf.GradientTape() as tape:
            tape.watch(b)
            out = myxtts_ops.masked_mel_loss(a, b, c, on_xla="error")
        return out.loss, out.state, tape.gradient(out.loss, b)

    rng = np.random.default_rng(0)
    args = (tf.constant(rng.standard_normal((3, 7, 5), np.float32)),
            tf.constant(rng.standard_normal((3, 7, 5), np.float32)), tf.constant([7, 0, 4]))
    xla = tf.function(step, jit_compile=True)
    got, want = xla(*args), tf.function(step)(*args)
    for a, b in zip(got, want):
        assert a.numpy().tobytes() == b.numpy().tobytes()
    hlo = xla.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
    assert hlo.count('custom_call_target="myxtts_ops_masked_mel_loss"') == 1, hlo
    assert hlo.count('custom_call_target="myxtts_ops_masked_mel_loss_grad"') == 1, hlo

    # The checks whose XLA kernels read compile-time constants (sizes unknown
    # when traced) are registered late too.
    from myxtts_ops.ops import check_lengths, check_sizes

    def checks(n, a, b):
        sizes = check_sizes([(tf.shape(a)[0], tf.shape(b)[0], "a axis 0", "b axis 0")])
        with tf.control_dependencies([sizes]):
            return check_lengths(n, "n", limit=9, bounds=[(tf.shape(a)[0], " (a)")])

    vec = tf.TensorSpec([None])
    fn = tf.function(checks, jit_compile=True,
                     input_signature=[tf.TensorSpec([None], tf.int32), vec, vec])
    assert fn(tf.constant([3]), tf.zeros([3]), tf.zeros([3])).numpy().tolist() == [3]
    for n, a, b, message in (([4], 3, 3, "n[0] = 4 is outside [0, 3] (a)"),
                             ([1], 3, 2, "a axis 0 is 3, but b axis 0 is 2")):
        try:
            fn(tf.constant(n), tf.zeros([a]), tf.zeros([b]))
            raise AssertionError("not refused: " + message)
        except tf.errors.InvalidArgumentError as e:
            assert message in str(e), str(e)
    print("ok", order)
    """
)


@pytest.mark.parametrize("order", ["before", "after"])
def test_load_order(order, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_ORDER_CHILD, order],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ok {order}" in proc.stdout


# ---------------------------------------------------------------------------
# Keras, XTTSLoss, SavedModel.
class MelDecoder(keras.Model):
    """Dense decoder whose training loss is the fused op with per-sample lengths."""

    def __init__(self, mels):
        super().__init__()
        self.proj = keras.layers.Dense(mels)

    def call(self, x):
        return self.proj(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return myxtts_ops.masked_mel_loss(y["mel"], y_pred, y["lengths"], on_xla="error").loss


def test_keras_fit_jit_compile_uses_fused_path(rng):
    n, t, d, m = 32, 10, 6, 4
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    mel = (x @ rng.standard_normal((d, m)).astype(np.float32)).astype(np.float32)
    lens = rng.integers(1, t + 1, n).astype(np.int32)
    model = MelDecoder(m)
    model.compile(optimizer=keras.optimizers.Adam(5e-2), jit_compile=True)
    data = tf.data.Dataset.from_tensor_slices((x, {"mel": mel, "lengths": lens})).batch(8)
    history = model.fit(data, epochs=4, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    # The fused path refuses out-of-range lengths inside fit(jit_compile=True)
    # (the XLA-compiled reference can only return NaN for them).
    bad = lens.copy()
    bad[5] = t + 3
    bad_data = tf.data.Dataset.from_tensor_slices((x, {"mel": mel, "lengths": bad})).batch(8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"lengths\[5\] = {t + 3} is outside"):
        model.fit(bad_data, epochs=1, verbose=0, shuffle=False)


def _xtts_trajectory(jit, n=240):
    """SPEC 4.1 example: clean mel loss alternating 0.3 / 1.0, no gradient norms."""
    from myxtts.training.losses import XTTSLoss

    loss_fn = XTTSLoss(implementation="fused")
    b, t, m = 2, 4, 3

    def step(level):
        y_true = {"mel_target": tf.zeros([b, t, m]), "mel_lengths": tf.constant([t, t - 1])}
        return loss_fn(y_true, {"mel_output": tf.fill([b, t, m], level)})

    fn = tf.function(step, input_signature=[tf.TensorSpec([], tf.float32)], jit_compile=jit)
    weights, totals = [], []
    for i in range(1, n + 1):
        totals.append(float(fn(tf.constant(0.3 if i % 2 else 1.0))))
        weights.append(float(loss_fn.get_adaptive_weight_metrics()["current_mel_weight"]))
    hlo = fn.experimental_get_compiler_ir(tf.constant(1.0))(stage="optimized_hlo") if jit else ""
    return np.array(weights), np.array(totals), hlo


def test_xtts_loss_trajectory_under_xla():
    w_xla, t_xla, hlo = _xtts_trajectory(jit=True)
    w_plain, t_plain, _ = _xtts_trajectory(jit=False)
    changes = [
        (i + 1, int(np.sign(w_xla[i] - w_xla[i - 1])))
        for i in range(1, len(w_xla))
        if w_xla[i] != w_xla[i - 1]
    ]
    assert changes == [(109, -1), (168, 1), (227, -1)]
    np.testing.assert_array_equal(w_xla, w_plain)
    np.testing.assert_array_equal(t_xla, t_plain)
    assert hlo.count(FORWARD_TARGET) == 1, hlo


def test_saved_model_from_jit_function(tmp_path, rng, inputs):
    y_true, y_pred, lens = inputs((2, 6, 3), "float32", lengths=[6, 2])

    class Module(tf.Module):
        # autograph=False: nothing to convert, and AutoGraph's conversion cache
        # once handed this method another test's converted function in a full run.
        @tf.function(
            jit_compile=True,
            input_signature=[tf.TensorSpec([None, None, 3], tf.float32)] * 2
            + [tf.TensorSpec([None], tf.int32)],
            autograph=False,
        )
        def loss(self, a, b, c):
            return myxtts_ops.masked_mel_loss(a, b, c).loss

    tf.saved_model.save(Module(), str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    args = (tf.constant(y_true), tf.constant(y_pred), tf.constant(lens))
    want = myxtts_ops.masked_mel_loss(*args).loss
    assert _bits(loaded.loss(*args)) == _bits(want)


_MIRRORED_CHILD = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import myxtts_ops

    def step(a, b, c):
        with tf.GradientTape() as tape:
            tape.watch(b)
            out = myxtts_ops.masked_mel_loss(a, b, c, on_xla="error")
        return out.loss, out.state, tape.gradient(out.loss, b)

    rng = np.random.default_rng(1)
    yt = rng.standard_normal((4, 6, 3)).astype(np.float32)
    yp = rng.standard_normal((4, 6, 3)).astype(np.float32)
    lens = np.array([6, 2, 0, 5], np.int32)
    shard = lambda x, r: tf.constant(x[2 * r: 2 * r + 2])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    xla = tf.function(step, jit_compile=True)
    values = [strategy.experimental_distribute_values_from_function(
        lambda ctx, x=x: shard(x, ctx.replica_id_in_sync_group)) for x in (yt, yp, lens)]
    results = strategy.run(xla, args=tuple(values))
    per_replica = [strategy.experimental_local_results(r) for r in results]
    for r in range(2):
        want = tf.function(step)(shard(yt, r), shard(yp, r), shard(lens, r))
        for got, w in zip((v[r] for v in per_replica), want):
            assert got.numpy().tobytes() == w.numpy().tobytes()
    hlo = xla.experimental_get_compiler_ir(shard(yt, 0), shard(yp, 0), shard(lens, 0))(
        stage="optimized_hlo")
    assert 'custom_call_target="myxtts_ops_masked_mel_loss"' in hlo
    print("ok mirrored")
    """
)


def test_mirrored_strategy_replicas(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_CHILD],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok mirrored" in proc.stdout


# ---------------------------------------------------------------------------
# Where the XLA path cannot exist: the reference, logged once, or an error.
def test_fallback_only_without_xla_path(monkeypatch, caplog, inputs):
    from myxtts_ops import _loader, ops

    y_true, y_pred, lens = inputs((2, 5, 3), "float32", lengths=[5, 2])
    args = (tf.constant(y_true), tf.constant(y_pred), tf.constant(lens))
    fn = lambda a, b, c: myxtts_ops.masked_mel_loss(a, b, c)  # noqa: E731
    with caplog.at_level("WARNING", logger="myxtts_ops"):
        assert FORWARD_TARGET in _optimized_hlo(tf.function(fn, jit_compile=True), *args)
    assert not [r for r in caplog.records if "reference" in r.getMessage()]

    monkeypatch.setattr(_loader, "xla_unavailable_reason", lambda: "a test says so")
    monkeypatch.setattr(ops, "_warned_xla", False)
    with caplog.at_level("WARNING", logger="myxtts_ops"):
        xla = tf.function(fn, jit_compile=True)
        out = xla(*args)
        assert "custom-call(" not in _optimized_hlo(xla, *args)
        tf.function(lambda a, b, c: fn(a, b, c), jit_compile=True)(*args)
    logged = [r.getMessage() for r in caplog.records if "reference" in r.getMessage()]
    assert len(logged) == 1 and "a test says so" in logged[0]
    want = myxtts_ops.masked_mel_loss(*args)
    np.testing.assert_allclose(out.loss.numpy(), want.loss.numpy(), rtol=1e-6)
    strict = lambda a, b, c: myxtts_ops.masked_mel_loss(a, b, c, on_xla="error")  # noqa: E731
    with pytest.raises(myxtts_ops.XlaUnsupportedError, match="a test says so"):
        tf.function(strict, jit_compile=True, autograph=False)(*args)


def test_ffi_handlers_exported_for_jax():
    """The same handlers, as PyCapsules of the TF-free pybind module (for
    jax.ffi.register_ffi_target). Only their presence is checked here: running
    them needs JAX, which the CPU CI does not install."""
    from myxtts_ops import kernels

    targets = kernels.ffi_targets()
    names = {
        "myxtts_ops_masked_mel_loss",
        "myxtts_ops_masked_mel_loss_grad",
        "myxtts_ops_check_lengths",
    }
    assert set(targets["cpu"]) == names
    assert ("CUDA" in targets) == kernels.built_with_cuda()
    for capsule in (c for platform in targets.values() for c in platform.values()):
        assert type(capsule).__name__ == "PyCapsule"


# ------------------------------------------------------------ check_lengths
CHECK_TARGET = 'custom_call_target="myxtts_ops_check_lengths"'


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_check_lengths_op_on_every_path(mode):
    """The length check passes good lengths through unchanged (an empty batch
    too) and refuses the first bad entry by name, index and value, with the
    note, on every path: under XLA as a custom call XLA keeps."""
    from myxtts_ops.ops import check_lengths

    def check(n):
        return check_lengths(n, "text_lengths", limit=7, note="; see the docs")

    fn = check if mode == "eager" else tf.function(check, jit_compile=mode == "xla")
    np.testing.assert_array_equal(fn(tf.constant([0, 7, 3])).numpy(), [0, 7, 3])
    assert fn(tf.zeros([0], tf.int32)).shape == (0,)
    for bad, shown in (([0, 8, 3], r"\[1\] = 8"), ([-5, 1, 1], r"\[0\] = -5")):
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=rf"text_lengths{shown} is outside \[0, 7\]; see the docs",
        ):
            fn(tf.constant(bad))
    if mode == "xla":
        hlo = fn.experimental_get_compiler_ir(tf.constant([1, 2]))(stage="hlo")
        assert hlo.count(CHECK_TARGET) == 1
        assert "output_to_operand_aliasing" in hlo
    with pytest.raises(ValueError, match="must be rank 1"):
        tf.function(check, jit_compile=mode == "xla")(tf.zeros([2, 2], tf.int32))


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_check_lengths_op_refuses_a_limit_past_int32(mode):
    """The checked lengths are int32: a limit past 2**31 - 1 is refused with
    the one message every path (and the JAX handler) gives."""
    from myxtts_ops.ops import check_lengths

    def check(n):
        return check_lengths(n, "mel_lengths", limit=2**31)

    fn = check if mode == "eager" else tf.function(check, jit_compile=mode == "xla")
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"limit must be in \[0, 2\^31 - 1\].*limit=2147483648"
    ):
        fn(tf.constant([1, 2], tf.int64))


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("dtype", ["int64", "float16", "bfloat16", "float32", "float64"])
def test_check_lengths_op_other_dtypes(mode, dtype):
    """int64 and float lengths: checked with one rule and returned as int32 on
    every path; a bad entry is shown as passed (a fraction, NaN, an infinity:
    not a whole number; a whole number out of range: outside); under XLA
    floats reach the custom call as float64 and nothing aliases."""
    from myxtts_ops.ops import check_lengths

    def check(n):
        return check_lengths(n, "mel_lengths", limit=70000, note=" (n)")

    fn = check if mode == "eager" else tf.function(check, jit_compile=mode == "xla")
    good = [0, 64, 3] if dtype in ("float16", "bfloat16") else [0, 70000, 3]
    got = fn(tf.constant(good, dtype))
    assert got.dtype == tf.int32
    np.testing.assert_array_equal(got.numpy(), good)
    assert fn(tf.zeros([0], dtype)).dtype == tf.int32
    cases = [([1, -2], r"\[1\] = -2 is outside")]
    if dtype == "int64":
        cases.append(([2**40, 1], rf"\[0\] = {2**40} is outside"))
    else:
        cases += [
            ([2.5, 1], r"\[0\] = 2\.5 is not a whole number in"),
            ([1, float("nan")], r"\[1\] = nan is not a whole number in"),
            ([float("-inf"), 1], r"\[0\] = -inf is not a whole number in"),
        ]
        if dtype in ("float32", "float64"):  # float32's shortest text, not 3.9000000953674316
            cases.append(([3.9, 1], r"\[0\] = 3\.9 is not a whole number in"))
            cases.append(([70001, 1], r"\[0\] = 70001 is outside"))
    for bad, shown in cases:
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=rf"mel_lengths{shown} \[0, 70000\] \(n\)"
        ):
            fn(tf.constant(bad, dtype))
    if mode == "xla":
        hlo = fn.experimental_get_compiler_ir(tf.constant([1, 2], dtype))(stage="hlo")
        assert hlo.count(CHECK_TARGET) == 1
        assert "output_to_operand_aliasing" not in hlo


def test_check_lengths_message_with_control_characters_under_xla():
    """Name and note reach the custom call's attributes intact, newline,
    tab, quote and backslash included (a raw newline would end them)."""
    from myxtts_ops.ops import check_lengths

    note = '; line one\nline two\t"quoted" \\ end'
    fn = tf.function(lambda n: check_lengths(n, 'odd "name"', limit=3, note=note), jit_compile=True)
    np.testing.assert_array_equal(fn(tf.constant([1, 2])).numpy(), [1, 2])
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        fn(tf.constant([1, 5]))
    assert info.value.message.startswith('odd "name"[1] = 5 is outside [0, 3]' + note)


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_check_lengths_bounds_known_only_when_run(mode):
    """Sizes unknown when traced (``bounds``): the smallest one below ``limit``
    is the limit, with its note, read when the graph runs (under XLA, when it
    compiles, where sizes are static and the custom call gets the limit)."""
    from myxtts_ops.ops import check_lengths

    def check(n, a, b):
        bounds = [(tf.shape(a)[0], " (a)"), (tf.shape(b)[0], " (b)")]
        return check_lengths(n, "text_lengths", limit=9, note=" (nine)", bounds=bounds)

    vec = tf.TensorSpec([None], tf.float32)
    fn = tf.function(
        check,
        jit_compile=mode == "xla",
        input_signature=[tf.TensorSpec([None], tf.int32), vec, vec],
    )
    six, seven, twelve = tf.zeros([6]), tf.zeros([7]), tf.zeros([12])
    np.testing.assert_array_equal(fn(tf.constant([6, 0]), seven, six).numpy(), [6, 0])
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"text_lengths\[0\] = 7 is outside \[0, 6\] \(b\)(\s|$)",
    ):
        fn(tf.constant([7, 0]), seven, six)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"\[1\] = 7 is outside \[0, 6\] \(a\)(\s|$)"
    ):
        fn(tf.constant([0, 7]), six, six)  # a tie: the first bound
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"\[0\] = 10 is outside \[0, 9\] \(nine\)(\s|$)"
    ):
        fn(tf.constant([10, 0]), twelve, twelve)  # both above the limit
    if mode == "xla":
        hlo = fn.experimental_get_compiler_ir(tf.constant([1, 2]), six, seven)(stage="hlo")
        assert hlo.count(CHECK_TARGET) == 1 and "limit = 6" in hlo


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_check_sizes_refuses_sizes_that_differ(mode):
    """One op compares sizes unknown when traced: when the graph runs, or under
    XLA when the function compiles (it lowers to nothing there), naming both."""
    from myxtts_ops.ops import check_sizes

    def body(a, b):
        check = check_sizes(
            [
                (tf.shape(a)[0], tf.shape(b)[0], "a axis 0 (U)", "b axis 0"),
                (tf.shape(b)[1], 1, "b axis 1", "the size it must have"),
            ]
        )
        with tf.control_dependencies([check]):
            return tf.reduce_sum(a) + tf.reduce_sum(b)

    fn = tf.function(
        body,
        jit_compile=mode == "xla",
        input_signature=[tf.TensorSpec([None]), tf.TensorSpec([None, None])],
    )
    assert float(fn(tf.ones([3]), tf.ones([3, 1]))) == 6.0
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"a axis 0 \(U\) is 1, but b axis 0 is 3"
    ):
        fn(tf.ones([1]), tf.ones([3, 1]))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"b axis 1 is 2, but the size it must have is 1"
    ):
        fn(tf.ones([3]), tf.ones([3, 2]))
    if mode == "xla":
        hlo = fn.experimental_get_compiler_ir(tf.ones([3]), tf.ones([3, 1]))(stage="hlo")
        assert "custom-call" not in hlo


def test_check_op_sizes_never_wrap_and_odd_arguments_are_named():
    """Sizes reach the int32 ops without wrapping: an int64 size past int32
    saturates (2**32 + 5 is not 5), a float or out-of-range Python size is a
    ValueError naming it; no pairs and generators work; the OpKernel checks
    the rank of bounds itself (eagerly no shape function runs)."""
    from myxtts_ops.ops import check_lengths, check_sizes, load_ops

    wide = tf.constant(2**32 + 5, tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="a is 2147483647, but b is 5"):
        check_sizes([(wide, 5, "a", "b")])
    check_sizes([(tf.constant(5, tf.int64), 5, "a", "b"), (np.array(3), 3, "c", "d")])
    for dtype, value, shown in ((tf.uint64, 2**63 + 5, 2147483647), (tf.int64, -(2**32) + 5, -1)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"a is {shown}, but b is 5"):
            check_sizes([(tf.constant(value, dtype), 5, "a", "b")])
    check_sizes([])
    check_sizes(p for p in [(3, 3, "a", "b")])
    for bad, what in ((3.7, r"sizes\[0\] must be an integer"), (-1, r"sizes\[0\] must be in")):
        with pytest.raises(ValueError, match=what):
            check_sizes([(bad, 3, "a", "b")])
    with pytest.raises(ValueError, match=r"expected sizes\[0\] must be in"):
        check_sizes([(3, 2**31, "a", "b")])
    lengths = tf.constant([1, 5])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"n\[1\] = 5 is outside \[0, 4\]"):
        check_lengths(lengths, "n", limit=9, bounds=(b for b in [(wide, " (w)"), (4, " (f)")]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="bounds must be a vector"):
        load_ops().myxtts_ops_check_lengths(
            lengths=lengths, bounds=tf.constant(4), input_name="n", limit=9, bound_notes=["x"]
        )
