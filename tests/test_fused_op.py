"""Tests of the fused op ``myxtts_ops.masked_mel_loss`` and of the pybind11
NumPy module ``myxtts_ops.kernels``.

The contract battery in ``test_reference.py`` runs for both implementations
(its ``impl`` fixture is parametrised); the fused-only tests here compare the
op with the reference and the oracle, check determinism across runs and
thread counts, the op graph, and the NumPy kernels module.
"""

import hashlib
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import oracle
from child_env import TESTS_DIR, child_env
from conftest import DTYPES, NP_DTYPES, assert_close, assert_grad_close, make_inputs, tol
from test_reference import LOSS_TYPES, NORMS, _call, _grads, _out_dtype


@pytest.fixture
def impl():
    import myxtts_ops

    return myxtts_ops.masked_mel_loss


@pytest.fixture
def reference():
    from myxtts_ops import reference

    return reference.masked_mel_loss


def _kernels():
    from myxtts_ops import kernels

    return kernels


# ---------------------------------------------------------------------------
# Public surface.
def test_public_api():
    import myxtts_ops

    assert myxtts_ops.STATE_SIZE == 19
    s = myxtts_ops.read_state(tf.zeros([myxtts_ops.STATE_SIZE], tf.float64))
    assert list(s) == [
        "steps",
        "clean_steps",
        "nonfinite_steps",
        "running_mean",
        "window_count",
        "window_mean",
        "window_variance",
        "last_loss",
    ]
    out = myxtts_ops.masked_mel_loss(tf.ones([1, 2, 3]), tf.zeros([1, 2, 3]))
    assert isinstance(out, myxtts_ops.MaskedMelLossOutput)
    assert out._fields == ("loss", "per_sample", "nonfinite_count", "state")


def test_graph_contains_fused_op(impl, inputs):
    y_true, y_pred, lens = inputs((2, 4, 3), "float32")

    @tf.function
    def f(a, b, c):
        with tf.GradientTape() as tape:
            tape.watch(b)
            out = impl(a, b, c)
        return out.loss, tape.gradient(out.loss, b)

    graph = f.get_concrete_function(
        tf.constant(y_true), tf.constant(y_pred), tf.constant(lens)
    ).graph
    types = set()
    for op in graph.get_operations():
        types.add(op.type)
    for fn in graph._functions.values() if hasattr(graph, "_functions") else []:
        for node in fn.definition.node_def:
            types.add(node.op)
    fused = sorted(t for t in types if t.startswith("MyxttsOps>"))
    assert "MyxttsOps>MaskedMelLoss" in fused, sorted(types)
    assert "MyxttsOps>MaskedMelLossGrad" in fused, sorted(types)
    # Not a composition: no elementwise loss math in the graph.
    assert not types & {"Abs", "Sub", "IsFinite", "Sum"}, sorted(types)


# ---------------------------------------------------------------------------
# Fused vs reference and oracle, including multi-chunk samples.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("normalization", NORMS)
def test_fused_matches_reference_and_oracle(
    impl, reference, rng, inputs, dtype, loss_type, normalization
):
    # 300 x 80 = 24000 elements per full sample: more than one CPU work chunk.
    shape = (3, 300, 80)
    y_true, y_pred, lens = inputs(shape, dtype, lengths=[300, 211, 0], nonfinite_padding=5, ties=10)
    kw = dict(loss_type=loss_type, huber_delta=1.5, normalization=normalization)
    g_b = rng.uniform(-1, 1, size=3).astype(_out_dtype(dtype))
    fused = _call(impl, y_true, y_pred, lens, **kw)
    ref = _call(reference, y_true, y_pred, lens, **kw)
    exp = oracle.forward(y_true, y_pred, lens, None, **kw)
    t = tol(dtype)
    for out in (fused, ref):
        assert_close(out.loss, exp["loss"], t["rtol"], t["atol"])
        assert_close(out.per_sample, exp["per_sample"], t["rtol"], t["atol"])
        assert int(out.nonfinite_count) == 0
    assert_close(fused.loss, ref.loss, t["rtol"], t["atol"])
    np.testing.assert_allclose(
        fused.state.numpy(),
        oracle.next_state(None, float(fused.loss), 0, (300 + 211) * 80),
        rtol=1e-13,
    )
    fg = _grads(impl, y_true, y_pred, lens, 1.3, g_b, **kw)
    rg = _grads(reference, y_true, y_pred, lens, 1.3, g_b, **kw)
    egt, egp = oracle.backward(y_true, y_pred, lens, grad_loss=1.3, grad_per_sample=g_b, **kw)
    terms = oracle.coefficient_terms(y_true, y_pred, lens, grad_loss=1.3, grad_per_sample=g_b, **kw)
    assert_grad_close(fg[1].numpy(), egp, dtype, "fused grad y_pred", terms)
    assert_grad_close(fg[0].numpy(), egt, dtype, "fused grad y_true", terms)
    assert_grad_close(fg[1].numpy(), rg[1].numpy(), dtype, "fused vs reference grad", 2 * terms)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_eager_equals_tf_function_bitwise(impl, inputs, dtype):
    y_true, y_pred, lens = inputs((4, 50, 20), dtype, nonfinite_valid=3)
    args = (tf.constant(y_true), tf.constant(y_pred), tf.constant(lens))
    state = tf.constant(np.linspace(0, 1, 19))

    def run(a, b, c, s):
        with tf.GradientTape() as tape:
            tape.watch(b)
            out = impl(a, b, c, s, loss_type="huber")
            target = out.loss + tf.reduce_sum(out.per_sample)
        return out, tape.gradient(target, b)

    e = run(*args, state)
    f = tf.function(run)(*args, state)
    for x, y in zip(tf.nest.flatten(e), tf.nest.flatten(f)):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def _digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(np.ascontiguousarray(np.asarray(t)).tobytes())
    return h.hexdigest()


def test_bitwise_determinism_repeated_runs(impl, inputs):
    y_true, y_pred, lens = inputs((6, 400, 80), "float32", nonfinite_valid=4)
    args = (tf.constant(y_true), tf.constant(y_pred), tf.constant(lens))
    digests = set()
    for _ in range(5):
        with tf.GradientTape() as tape:
            tape.watch(args[1])
            out = impl(*args, normalization="global")
        g = tape.gradient(out.loss, args[1])
        digests.add(_digest([out.loss, out.per_sample, out.nonfinite_count, out.state, g]))
    assert len(digests) == 1


_THREAD_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    import tensorflow as tf
    threads = int(sys.argv[1])
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    import myxtts_ops
    rng = np.random.default_rng(int(sys.argv[2]))
    h = hashlib.sha256()
    for dtype in (np.float32, np.float64):
        yt = rng.standard_normal((8, 300, 80)).astype(dtype)
        yp = rng.standard_normal((8, 300, 80)).astype(dtype)
        yt[1, 5, 3] = np.nan
        lens = tf.constant(rng.integers(0, 301, size=8), tf.int64)
        a, b = tf.constant(yt), tf.constant(yp)
        for norm in ("per_sample", "global"):
            with tf.GradientTape() as tape:
                tape.watch(b)
                out = myxtts_ops.masked_mel_loss(a, b, lens, loss_type="huber",
                                                 normalization=norm)
                target = out.loss + tf.reduce_sum(out.per_sample)
            g = tape.gradient(target, b)
            for t in (out.loss, out.per_sample, out.nonfinite_count, out.state, g):
                h.update(np.ascontiguousarray(t.numpy()).tobytes())
    print("DIGEST", h.hexdigest())
    """
)


def test_bitwise_determinism_across_thread_counts(rng):
    seed = str(int(rng.integers(0, 2**31)))
    env = child_env()
    digests = {}
    for threads in (1, 0, 4):
        # cwd: `python -c` puts it first on sys.path; the repo root would
        # shadow the installed package with the unbuilt source tree.
        proc = subprocess.run(
            [sys.executable, "-c", _THREAD_SCRIPT, str(threads), seed],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            cwd=TESTS_DIR,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("DIGEST")]
        assert line, proc.stdout + proc.stderr[-2000:]
        digests[threads] = line[-1]
    assert len(set(digests.values())) == 1, digests


# ---------------------------------------------------------------------------
# Runtime shape checks with unknown static shapes.
def test_dynamic_shape_errors(impl):
    spec = tf.TensorSpec([None, None, None], tf.float32)
    fn = tf.function(
        lambda a, b, c, s: impl(a, b, c, s),
        input_signature=[
            spec,
            spec,
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.float64),
        ],
    )
    y = np.zeros((2, 3, 4), np.float32)
    ok_state = np.zeros(19)
    fn(y, y, np.array([1, 2], np.int32), ok_state)
    with pytest.raises(tf.errors.InvalidArgumentError, match="lengths"):
        fn(y, y, np.array([1, 2, 3], np.int32), ok_state)
    with pytest.raises(tf.errors.InvalidArgumentError, match="state"):
        fn(y, y, np.array([1, 2], np.int32), np.zeros(7))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"y_pred|shape"):
        fn(y, np.zeros((2, 3, 5), np.float32), np.array([1, 2], np.int32), ok_state)


# ---------------------------------------------------------------------------
# The pybind11 NumPy module.
# (shape, lengths, non-finite values put into valid elements): the single
# element once finite and once not, so neither case hides the other.
KERNEL_SHAPES = [
    ((1, 1, 1), [1], 0),
    ((1, 1, 1), [1], 1),
    ((3, 7, 5), "random", 2),
    ((2, 260, 80), [260, 77], 2),
    ((2, 4, 3), None, 2),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "loss_type,normalization", [("l1", "per_sample"), ("huber", "global"), ("huber", "per_sample")]
)
@pytest.mark.parametrize(
    "shape,lengths,nonfinite", KERNEL_SHAPES, ids=lambda v: str(v).replace(" ", "")
)
@pytest.mark.parametrize("lengths_dtype", [np.int32, np.int64])
def test_kernels_forward_backward_vs_oracle(
    rng, dtype, loss_type, normalization, shape, lengths, nonfinite, lengths_dtype
):
    k = _kernels()
    y_true, y_pred, lens = make_inputs(
        rng,
        shape,
        dtype,
        lengths=lengths,
        lengths_dtype=lengths_dtype,
        nonfinite_valid=nonfinite,
        nonfinite_padding=2 if lengths is not None else 0,
        ties=2,
    )
    state = np.zeros(19)
    state[1], state[4], state[8], state[9] = 1.0, 1.0, 1.0, 0.25
    kw = dict(loss_type=loss_type, huber_delta=0.75, normalization=normalization)
    out = k.forward(y_true, y_pred, lens, state, **kw)
    assert set(out) >= {"loss", "per_sample", "nonfinite_count", "state", "sample_weights"}
    exp = oracle.forward(y_true, y_pred, lens, state, **kw)
    t = tol(dtype)
    assert np.asarray(out["loss"]).dtype == _out_dtype(dtype)
    assert np.asarray(out["per_sample"]).dtype == _out_dtype(dtype)
    assert_close(out["loss"], exp["loss"], t["rtol"], t["atol"])
    assert_close(out["per_sample"], exp["per_sample"], t["rtol"], t["atol"])
    assert int(out["nonfinite_count"]) == exp["nonfinite_count"]
    np.testing.assert_allclose(out["sample_weights"], exp["sample_weights"], rtol=1e-15)
    assert np.asarray(out["state"]).dtype == np.float64
    np.testing.assert_allclose(
        out["state"],
        oracle.next_state(
            state,
            float(out["loss"]),
            exp["nonfinite_count"],
            (shape[0] * shape[1] if lens is None else int(np.sum(lens))) * shape[2],
        ),
        rtol=1e-13,
    )
    assert np.all(state[:2] == [0.0, 1.0])  # input state not mutated
    g_loss = np.asarray(1.7, _out_dtype(dtype))
    g_b = rng.uniform(-1, 1, size=shape[0]).astype(_out_dtype(dtype))
    gt, gp = k.backward(
        y_true,
        y_pred,
        lens,
        out["sample_weights"],
        g_loss,
        g_b,
        loss_type=loss_type,
        huber_delta=0.75,
    )
    assert gt.dtype == NP_DTYPES[dtype] and gp.dtype == NP_DTYPES[dtype]
    assert gt.shape == shape and gp.shape == shape
    egt, egp = oracle.backward(y_true, y_pred, lens, grad_loss=1.7, grad_per_sample=g_b, **kw)
    terms = oracle.coefficient_terms(y_true, y_pred, lens, grad_loss=1.7, grad_per_sample=g_b, **kw)
    assert_grad_close(gp, egp, dtype, "kernels grad y_pred", terms)
    assert_grad_close(gt, egt, dtype, "kernels grad y_true", terms)
    zero = egp == 0
    assert np.all(gp.astype(np.float64)[zero] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_thread_counts_bitwise(rng, dtype):
    k = _kernels()
    y_true, y_pred, lens = make_inputs(rng, (5, 500, 80), dtype, nonfinite_valid=3)
    results = []
    for threads in (1, 2, 4):
        out = k.forward(
            y_true,
            y_pred,
            lens,
            None,
            loss_type="huber",
            huber_delta=1.0,
            normalization="per_sample",
            num_threads=threads,
        )
        gt, gp = k.backward(
            y_true,
            y_pred,
            lens,
            out["sample_weights"],
            np.asarray(1.0, _out_dtype(dtype)),
            np.ones(5, _out_dtype(dtype)),
            loss_type="huber",
            huber_delta=1.0,
            num_threads=threads,
        )
        results.append(
            _digest(
                [
                    out["loss"],
                    out["per_sample"],
                    out["nonfinite_count"],
                    out["state"],
                    out["sample_weights"],
                    gt,
                    gp,
                ]
            )
        )
    assert len(set(results)) == 1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_kernels_equal_tf_op_bitwise(impl, rng, dtype):
    y_true, y_pred, lens = make_inputs(rng, (3, 120, 80), dtype, nonfinite_valid=2)
    k = _kernels()
    state = np.zeros(19)
    ko = k.forward(
        y_true, y_pred, lens, state, loss_type="l1", huber_delta=1.0, normalization="global"
    )
    to = _call(impl, y_true, y_pred, lens, state, normalization="global")
    np.testing.assert_array_equal(np.asarray(ko["loss"]), to.loss.numpy())
    np.testing.assert_array_equal(np.asarray(ko["per_sample"]), to.per_sample.numpy())
    np.testing.assert_array_equal(np.asarray(ko["state"]), to.state.numpy())
    assert int(ko["nonfinite_count"]) == int(to.nonfinite_count)


@pytest.mark.parametrize(
    "mutate,pattern",
    [
        (lambda a: dict(a, y_pred=a["y_pred"][:, :2]), r"y_pred|shape"),
        (lambda a: dict(a, y_pred=a["y_pred"].astype(np.float64)), r"dtype|y_pred"),
        (lambda a: dict(a, y_true=a["y_true"][0], y_pred=a["y_pred"][0]), r"rank|y_true"),
        (lambda a: dict(a, lengths=np.array([1, 5], np.int32)), r"lengths.*5|5.*lengths"),
        (lambda a: dict(a, lengths=np.array([-3, 1], np.int32)), r"lengths.*-3|-3.*lengths"),
        (lambda a: dict(a, lengths=np.array([1, 2, 3], np.int32)), r"lengths"),
        (lambda a: dict(a, lengths=np.array([1.0, 2.0])), r"lengths"),
        (lambda a: dict(a, state=np.zeros(5)), r"state"),
        (lambda a: dict(a, loss_type="l3"), r"loss_type.*l3"),
        (lambda a: dict(a, normalization="x"), r"normalization.*x"),
        (lambda a: dict(a, huber_delta=-1.0), r"huber_delta"),
        (
            lambda a: dict(
                a, y_true=a["y_true"].astype(np.int32), y_pred=a["y_pred"].astype(np.int32)
            ),
            r"dtype|y_true|int32",
        ),
    ],
    ids=[
        "shape",
        "dtype",
        "rank",
        "len_gt_T",
        "len_neg",
        "len_B",
        "len_float",
        "state",
        "loss_type",
        "norm",
        "delta",
        "int",
    ],
)
def test_kernels_bad_input(mutate, pattern):
    k = _kernels()
    args = dict(
        y_true=np.zeros((2, 4, 3), np.float32),
        y_pred=np.zeros((2, 4, 3), np.float32),
        lengths=np.array([1, 2], np.int32),
        state=None,
        loss_type="l1",
        huber_delta=1.0,
        normalization="per_sample",
    )
    args = mutate(args)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=pattern):
        k.forward(
            args.pop("y_true"), args.pop("y_pred"), args.pop("lengths"), args.pop("state"), **args
        )


@pytest.mark.parametrize("shape", [(0, 3, 2), (2, 0, 3), (2, 3, 0)])
def test_kernels_empty(shape):
    k = _kernels()
    y = np.zeros(shape, np.float32)
    out = k.forward(y, y, None, None, loss_type="l1", huber_delta=1.0, normalization="per_sample")
    assert float(out["loss"]) == 0.0
    assert np.asarray(out["per_sample"]).shape == (shape[0],)
    assert float(out["state"][0]) == 1.0 and float(out["state"][1]) == 0.0
    gt, gp = k.backward(
        y,
        y,
        None,
        out["sample_weights"],
        np.float32(1.0),
        np.zeros(shape[0], np.float32),
        loss_type="l1",
        huber_delta=1.0,
    )
    assert gt.shape == shape and gp.shape == shape


def test_kernels_bfloat16_is_ml_dtypes():
    k = _kernels()
    y = np.ones((1, 2, 2), ml_dtypes.bfloat16)
    # Built as bfloat16, not y * 2: with TensorFlow 2.18's NumPy and ml_dtypes that is float32.
    gt, gp = k.backward(
        y,
        np.full((1, 2, 2), 2, ml_dtypes.bfloat16),
        None,
        np.array([[0.25], [0.25]]),
        np.float32(1.0),
        np.zeros(1, np.float32),
        loss_type="l1",
        huber_delta=1.0,
    )
    assert gp.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(gp.astype(np.float32), np.full((1, 2, 2), 0.25, np.float32))


def test_float64_huber_delta_not_rounded(impl, reference, inputs):
    """float64 inputs use huber_delta at full precision (0.7 is not a float32)."""
    y_true, y_pred, lens = inputs((2, 30, 8), "float64")
    kw = dict(loss_type="huber", huber_delta=0.7)
    fused = _call(impl, y_true, y_pred, lens, **kw)
    exp = oracle.forward(y_true, y_pred, lens, None, **kw)
    np.testing.assert_allclose(fused.loss.numpy(), exp["loss"], rtol=1e-12)


# ---------------------------------------------------------------------------
# return_counts: what a caller that reduces over the batch itself needs.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", ["random", "full", None, "zero"])
@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_counts_against_oracle(rng, dtype, lengths, normalization, loss_type):
    """active_count (samples with a counted element) and valid_count (elements
    before the lengths) from the fused op (eager and in a graph), the pure-TF
    reference and the kernels module, against the float64 oracle's counts,
    with NaN/Inf in valid frames and padding, a sample made all non-finite and,
    for float32, an element whose loss overflows from finite inputs (it does not
    count, so a sample holding only it is not active)."""
    import myxtts_ops
    from myxtts_ops import reference

    shape = (6, 9, 5)
    lens_arg = [0] * shape[0] if lengths == "zero" else lengths
    y_true, y_pred, lens = make_inputs(
        rng, shape, dtype, lengths=lens_arg, nonfinite_valid=4, nonfinite_padding=3
    )
    longest = 0 if lens is None else int(np.argmax(lens))
    n = shape[1] if lens is None else int(lens[longest])
    y_pred[longest, :n] = np.nan  # a sample whose valid elements are all non-finite
    if dtype == "float32" and lens is not None and n > 0:
        other = (longest + 1) % shape[0]
        if lens[other] > 0:  # a sample whose only valid element overflows
            y_true[other] = 0.0
            y_pred[other] = np.nan
            y_true[other, 0, 0], y_pred[other, 0, 0] = -3e38, 3e38
    _, counts, bad, lens_list = oracle._sample_stats(y_true, y_pred, lens, loss_type, 1.0)
    want_active = sum(1 for c in counts if c > 0)
    want_valid = sum(lens_list) * shape[2]
    assert sum(bad) == want_valid - sum(counts)

    def run(fn):
        return fn(
            y_true,
            y_pred,
            lens,
            loss_type=loss_type,
            normalization=normalization,
            return_counts=True,
        )

    graph = tf.function(lambda: run(myxtts_ops.masked_mel_loss))
    for name, out in (
        ("fused", run(myxtts_ops.masked_mel_loss)),
        ("fused graph", graph()),
        ("reference", run(reference.masked_mel_loss)),
    ):
        assert isinstance(out, myxtts_ops.MaskedMelLossCounts), name
        assert out.active_count.dtype == tf.int64 and out.active_count.shape == (), name
        assert int(out.active_count) == want_active, name
        assert int(out.valid_count) == want_valid, name
        assert int(out.nonfinite_count) == sum(bad), name
    k = _kernels().forward(y_true, y_pred, lens, loss_type=loss_type, normalization=normalization)
    assert int(k["active_count"]) == want_active
    assert int(k["valid_count"]) == want_valid


def test_default_output_has_four_fields(inputs):
    import myxtts_ops

    y_true, y_pred, lens = inputs((2, 3, 4), "float32")
    out = myxtts_ops.masked_mel_loss(y_true, y_pred, lens)
    loss, per_sample, nonfinite_count, state = out  # unpacking stays as it was
    assert type(out) is myxtts_ops.MaskedMelLossOutput
