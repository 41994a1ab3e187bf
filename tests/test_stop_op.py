"""The fused stop-token op (``myxtts_ops.ops.stop_token_bce``) that XTTSLoss's
stop term runs outside XLA, against independent float64 references.

Values against a NumPy model of contract 3.2; gradients against float64 TF
autodiff of the plain formula (no hand-written derivative); both with
lengths 0 / full / mixed, odd shapes, NaN/Inf in valid positions and in
padding, and the clip bounds. The term's two paths (the fused op outside
XLA, TF ops inside ``jit_compile=True``) are checked to agree, and bad input
is refused naming the input and the value.
"""

import numpy as np
import pytest
import tensorflow as tf

import oracle
from myxtts_ops.ops import HigherOrderGradientError, stop_token_bce

POS_WEIGHT, SMOOTHING, PROB_MIN = 5.0, 0.1, 1e-7
CONFIG = dict(positive_weight=POS_WEIGHT, label_smoothing=SMOOTHING, prob_min=PROB_MIN)
# The smallest accepted prob_min: 2**-24, the float32 spacing below 1 (from
# 2**-25 down the upper clip bound 1 - prob_min rounds to 1: log(1 - pc) log(0)).
SMALLEST_PROB_MIN = 2.0**-24


def _inputs(rng, batch, frames, lengths_mode, poison):
    target = (rng.random((batch, frames)) < 0.2).astype(np.float32)
    pred = rng.uniform(0.001, 0.999, (batch, frames)).astype(np.float32)
    if lengths_mode == "full":
        lengths = np.full(batch, frames, np.int32)
    elif lengths_mode == "zero":
        lengths = np.zeros(batch, np.int32)
    else:
        lengths = rng.integers(0, frames + 1, batch).astype(np.int32)
        lengths[0] = frames
        if batch > 1:
            lengths[-1] = 0
    valid = np.arange(frames)[None, :] < lengths[:, None]
    for where in poison:
        cells = np.argwhere(valid if where == "valid" else ~valid)
        for b, t in cells[rng.permutation(len(cells))[:3]]:
            arr = target if rng.random() < 0.5 else pred
            arr[b, t] = rng.choice([np.nan, np.inf, -np.inf])
    return target, pred, lengths


def _numpy_model(target, pred, lengths, weights=None, config=CONFIG):
    """Contract 3.2 in float64 (tests/oracle.py, shared with the CUDA suite)."""
    weights = np.ones(len(lengths)) if weights is None else weights
    return oracle.stop_bce(target, pred, lengths, weights, **config)


def _autodiff_grads(target, pred, lengths, weights, config=CONFIG):
    """d sum_b weights[b] * sums[b] / d (target, pred) by float64 TF autodiff,
    with the clip bounds the float32 inputs are clipped to (1 - 1e-7 is
    1 - 2**-23 in float32, whose log(1 - p) differs from float64's by 1e-3
    relative)."""
    w, s = config["positive_weight"], config["label_smoothing"]
    lo = float(np.float32(config["prob_min"]))
    hi = float(np.float32(1.0) - np.float32(config["prob_min"]))
    t = tf.constant(target, tf.float64)
    p = tf.constant(pred, tf.float64)
    valid = tf.sequence_mask(lengths, target.shape[1])
    ok = valid & tf.math.is_finite(t) & tf.math.is_finite(p)
    with tf.GradientTape() as tape:
        tape.watch([t, p])
        ts = tf.where(ok, t, 0.0)
        ps = tf.where(ok, p, 0.5)
        pc = tf.clip_by_value(ps, lo, hi)
        y = ts * (1.0 - s) + 0.5 * s
        elem = -(w * y * tf.math.log(pc) + (1.0 - y) * tf.math.log(1.0 - pc))
        sums = tf.reduce_sum(tf.where(ok, elem, 0.0), axis=1)
        total = tf.reduce_sum(sums * weights)
    return [g.numpy() for g in tape.gradient(total, [t, p])]


def _op_and_grads(target, pred, lengths, weights, graph, config=CONFIG):
    def run(t, p, n):
        with tf.GradientTape() as tape:
            tape.watch([t, p])
            sums, counts, nonfinite = stop_token_bce(t, p, n, **config)
            total = tf.reduce_sum(sums * weights)
        return sums, counts, nonfinite, tape.gradient(total, [t, p])

    fn = tf.function(run) if graph else run
    out = fn(tf.constant(target), tf.constant(pred), tf.constant(lengths))
    return tf.nest.map_structure(lambda x: x.numpy(), out)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("poison", [(), ("valid",), ("padding",), ("valid", "padding")])
@pytest.mark.parametrize("lengths_mode", ["full", "zero", "mixed"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (5, 37), (4, 1001)])
def test_values_and_gradients_match_float64_references(rng, shape, lengths_mode, poison, graph):
    target, pred, lengths = _inputs(rng, *shape, lengths_mode, poison)
    weights = rng.uniform(-2.0, 2.0, shape[0]).astype(np.float32)
    sums, counts, nonfinite, (g_target, g_pred) = _op_and_grads(
        target, pred, lengths, weights, graph
    )
    ref = _numpy_model(target, pred, lengths, weights)
    np.testing.assert_array_equal(counts, ref.counts)
    assert nonfinite == ref.nonfinite
    np.testing.assert_allclose(sums, ref.sums, rtol=2e-6, atol=1e-5)
    ref_g_target, ref_g_pred = _autodiff_grads(target, pred, lengths, weights)
    for got, want, derived, name in (
        (g_target, ref_g_target, ref.grad_target, "target"),
        (g_pred, ref_g_pred, ref.grad_pred, "pred"),
    ):
        assert np.isfinite(got).all(), name
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale, err_msg=name)
        # The CUDA suite's oracle gradients (hand-derived) agree with autodiff.
        np.testing.assert_allclose(derived, want, rtol=1e-9, atol=1e-12 * scale, err_msg=name)
    # Padding and uncounted positions get exactly 0.
    valid = np.arange(shape[1])[None, :] < lengths[:, None]
    assert not g_pred[~valid].any() and not g_target[~valid].any()


def test_clip_bounds_pass_no_gradient_to_the_prediction():
    target = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
    pred = np.array([[0.0, 1.0, 0.5, 0.25]], np.float32)
    lengths = np.array([4], np.int32)
    sums, counts, _, (g_target, g_pred) = _op_and_grads(
        target, pred, lengths, np.ones(1, np.float32), graph=False
    )
    np.testing.assert_allclose(sums, _numpy_model(target, pred, lengths).sums, rtol=2e-6)
    assert counts[0] == 4
    assert g_pred[0, 0] == 0.0 and g_pred[0, 1] == 0.0
    assert g_pred[0, 2] != 0.0 and g_pred[0, 3] != 0.0
    ref_g_target, ref_g_pred = _autodiff_grads(target, pred, lengths, np.ones(1))
    np.testing.assert_allclose(g_target, ref_g_target, rtol=1e-5)
    np.testing.assert_allclose(g_pred, ref_g_pred, rtol=1e-5)


# Settings other than the term's: positive weights below and above 1, no and
# strong smoothing, the smallest accepted prob_min and wide clip bounds.
OTHER_SETTINGS = [
    dict(positive_weight=2.5, label_smoothing=0.0, prob_min=SMALLEST_PROB_MIN),
    dict(positive_weight=1.0, label_smoothing=0.3, prob_min=1e-3),
    dict(positive_weight=0.5, label_smoothing=0.05, prob_min=0.25),
    dict(positive_weight=-1.5, label_smoothing=1.0, prob_min=6e-8),
]


def _edge_predictions(rng, batch, frames, prob_min):
    """Predictions at 0 and 1, outside [0, 1], at and beside the float32 clip
    bounds, and inside, with targets 0 and 1."""
    lo = np.float32(prob_min)
    hi = np.float32(1.0) - lo
    edges = np.array(
        [
            0.0,
            1.0,
            -0.5,
            1.5,
            -1e30,
            1e30,
            lo,
            hi,
            np.nextafter(lo, np.float32(1)),
            np.nextafter(hi, np.float32(0)),
            np.nextafter(lo, np.float32(0)),
            0.5,
        ],
        np.float32,
    )
    pred = rng.choice(edges, (batch, frames)).astype(np.float32)
    inside = rng.random((batch, frames)) < 0.3
    pred[inside] = rng.uniform(lo, hi, inside.sum()).astype(np.float32)
    target = (rng.random((batch, frames)) < 0.4).astype(np.float32)
    return target, pred


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize(
    "config",
    OTHER_SETTINGS,
    ids=lambda c: "w{positive_weight}-s{label_smoothing}-lo{prob_min:g}".format(**c),
)
def test_other_settings_and_edge_predictions_match_float64_references(rng, config, graph):
    target, pred = _edge_predictions(rng, 5, 41, config["prob_min"])
    lengths = np.array([41, 0, 17, 40, 1], np.int32)
    weights = rng.uniform(-2.0, 2.0, 5).astype(np.float32)
    sums, counts, nonfinite, (g_target, g_pred) = _op_and_grads(
        target, pred, lengths, weights, graph, config
    )
    ref = _numpy_model(target, pred, lengths, weights, config)
    np.testing.assert_array_equal(counts, ref.counts)
    assert nonfinite == 0
    assert np.isfinite(sums).all() and np.isfinite(g_pred).all() and np.isfinite(g_target).all()
    np.testing.assert_allclose(sums, ref.sums, rtol=2e-6, atol=1e-5)
    ref_g_target, ref_g_pred = _autodiff_grads(target, pred, lengths, weights, config)
    for got, want, derived, name in (
        (g_target, ref_g_target, ref.grad_target, "target"),
        (g_pred, ref_g_pred, ref.grad_pred, "pred"),
    ):
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale, err_msg=name)
        np.testing.assert_allclose(derived, want, rtol=1e-9, atol=1e-12 * scale, err_msg=name)
    kernels = _kernels_module()
    out = kernels.stop_forward(target, pred, lengths, **config)
    np.testing.assert_array_equal(out["sums"], sums)
    gt, gp = kernels.stop_backward(target, pred, lengths, weights, **config)
    np.testing.assert_array_equal(gt, g_target)
    np.testing.assert_array_equal(gp, g_pred)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_empty_inputs(shape):
    target = np.zeros(shape, np.float32)
    lengths = np.zeros(shape[0], np.int32)
    sums, counts, nonfinite, (g_target, g_pred) = _op_and_grads(
        target, target, lengths, np.ones(shape[0], np.float32), graph=True
    )
    assert sums.shape == (shape[0],) and not sums.any() and not counts.any()
    assert nonfinite == 0
    assert g_target.shape == shape and g_pred.shape == shape


def test_repeated_calls_are_bitwise_identical(rng):
    target, pred, lengths = _inputs(rng, 16, 2049, "mixed", ("valid",))
    first = _op_and_grads(target, pred, lengths, np.ones(16, np.float32), graph=True)
    for _ in range(3):
        again = _op_and_grads(target, pred, lengths, np.ones(16, np.float32), graph=True)
        for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(again)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize(
    "lengths, message",
    [
        ([4, -1], r"stop lengths\[1\] = -1 is outside \[0, 4\]"),
        ([5, 0], r"stop lengths\[0\] = 5 is outside \[0, 4\]"),
    ],
)
def test_out_of_range_lengths_are_refused(lengths, message, graph):
    x = tf.fill([2, 4], 0.5)
    n = tf.constant(lengths, tf.int32)

    def call():
        return stop_token_bce(x, x, n, POS_WEIGHT, SMOOTHING, PROB_MIN)[0]

    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        (tf.function(call) if graph else call)()


@pytest.mark.parametrize(
    "lengths", [np.array([4, 2**32 + 1], np.int64), [4, 2**32 + 1]], ids=["int64", "list"]
)
def test_lengths_that_are_not_int32_are_refused_not_wrapped(lengths):
    """An eager call would convert them to the op's int32 by wrapping 2**32 + 1
    to 1: refused by their type first."""
    x = tf.fill([2, 4], 0.5)
    with pytest.raises(TypeError, match="stop lengths must be int32, got int64"):
        stop_token_bce(x, x, lengths, POS_WEIGHT, SMOOTHING, PROB_MIN)


def test_mismatched_shapes_are_refused():
    sig = [tf.TensorSpec(None, tf.float32)] * 2 + [tf.TensorSpec(None, tf.int32)]

    @tf.function(input_signature=sig)
    def call(t, p, n):
        return stop_token_bce(t, p, n, POS_WEIGHT, SMOOTHING, PROB_MIN)[0]

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"stop_tokens must have the shape"):
        call(tf.zeros([2, 4]), tf.zeros([2, 5]), tf.constant([1, 1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"stop lengths must have shape \[2\]"):
        call(tf.zeros([2, 4]), tf.zeros([2, 4]), tf.constant([1, 1, 1]))


def test_second_order_gradient_is_refused_by_name():
    x = tf.fill([2, 4], 0.25)
    n = tf.constant([4, 2])
    with pytest.raises(HigherOrderGradientError, match="first-order"):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                total = tf.reduce_sum(stop_token_bce(x, x, n, POS_WEIGHT, SMOOTHING, PROB_MIN)[0])
            grad = inner.gradient(total, x)
        outer.gradient(grad, x)


@pytest.mark.parametrize("with_lengths", [True, False])
def test_stop_term_outside_xla_equals_inside(rng, with_lengths):
    """XTTSLoss's stop term: the fused op (plain graph) and TF ops (XLA, and
    ``fused=False`` in the plain graph) agree."""
    from myxtts_loss import terms

    target, pred, lengths = _inputs(rng, 6, 53, "mixed", ("valid", "padding"))
    args = [tf.constant(target), tf.constant(pred), tf.constant(lengths)]

    def term(t, p, n, fused=True):
        with tf.GradientTape() as tape:
            tape.watch([t, p])
            stats = terms.stop_stats(t, p, n if with_lengths else None, fused=fused)
            value = stats.num / stats.den
        return value, stats.nonfinite, tape.gradient(value, [t, p])

    plain = tf.function(term, jit_compile=False)(*args)
    for other in (
        tf.function(term, jit_compile=True)(*args),
        tf.function(lambda *a: term(*a, fused=False))(*args),
    ):
        np.testing.assert_allclose(plain[0], other[0], rtol=1e-6)
        assert plain[1].numpy() == other[1].numpy()
        for a, b in zip(plain[2], other[2]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


_PROB_MIN_RULE = (
    r"prob_min must be in \[5\.9604645e-08, 0\.5\) \(at least 2\^-24, the float32 spacing "
    r"below 1, so that the upper clip bound 1 - prob_min stays below 1\), got "
)
_END = r"(?![\w.+-])"  # the value ends there (TF may append the op's name)
# prob_min values every entry point refuses, with the value the message
# prints: the float32 the setting is, subnormals included (TF's kernels run
# with denormals-are-zero, under which a plain comparison reads them as 0).
BAD_PROB_MINS = [
    (0.0, _PROB_MIN_RULE + "0" + _END),
    (1e-40, _PROB_MIN_RULE + "1e-40" + _END),
    (
        float(np.nextafter(np.float32(SMALLEST_PROB_MIN), np.float32(0))),
        _PROB_MIN_RULE + "5\\.960464e-08" + _END,
    ),
    (2.9e-8, _PROB_MIN_RULE + "2\\.9e-08" + _END),
    (-1e-7, _PROB_MIN_RULE + "-1e-07" + _END),
    (0.5, _PROB_MIN_RULE + "0\\.5" + _END),
    (float("nan"), _PROB_MIN_RULE + "nan" + _END),
    (float("inf"), _PROB_MIN_RULE + "inf" + _END),
]


def _kernels_module():
    return pytest.importorskip("myxtts_ops.kernels")


def test_numpy_kernels_module_equals_the_tf_op(rng):
    """The pybind11 module runs the same CPU kernels: bitwise the op's outputs."""
    kernels = _kernels_module()
    target, pred, lengths = _inputs(rng, 7, 333, "mixed", ("valid", "padding"))
    weights = rng.uniform(-1, 1, 7).astype(np.float32)
    sums, counts, nonfinite, (g_target, g_pred) = _op_and_grads(
        target, pred, lengths, weights, graph=True
    )
    for threads in (1, 3):
        out = kernels.stop_forward(target, pred, lengths, num_threads=threads, **CONFIG)
        np.testing.assert_array_equal(out["sums"], sums)
        np.testing.assert_array_equal(out["counts"], counts)
        assert int(out["nonfinite_count"]) == nonfinite
        gt, gp = kernels.stop_backward(
            target, pred, lengths, weights, num_threads=threads, **CONFIG
        )
        np.testing.assert_array_equal(gt, g_target)
        np.testing.assert_array_equal(gp, g_pred)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(lengths=np.array([3, 5], np.int32)), r"stop lengths\[1\] = 5 is outside \[0, 4\]"),
        (dict(lengths=np.array([3], np.int32)), r"stop lengths must have shape \[2\]"),
        (dict(lengths=np.array([3, 1], np.int64)), r"stop lengths must be int32"),
        (dict(pred=np.zeros([2, 5], np.float32)), r"stop_tokens must have the shape"),
        (dict(target=np.zeros([2, 4], np.float64)), r"stop_target must be float32"),
        (dict(positive_weight=float("nan")), r"positive_weight must be finite, got nan"),
        (dict(label_smoothing=float("-inf")), r"label_smoothing must be finite, got -inf"),
    ]
    + [(dict(prob_min=value), message) for value, message in BAD_PROB_MINS],
)
def test_numpy_kernels_module_refuses_bad_input_by_name(change, message):
    kernels = _kernels_module()
    args = dict(
        target=np.zeros([2, 4], np.float32),
        pred=np.full([2, 4], 0.5, np.float32),
        lengths=np.array([3, 1], np.int32),
        positive_weight=POS_WEIGHT,
        label_smoothing=SMOOTHING,
        prob_min=PROB_MIN,
    )
    args.update(change)
    with pytest.raises(ValueError, match=message):
        kernels.stop_forward(**args)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("value, message", BAD_PROB_MINS)
def test_op_refuses_a_bad_prob_min_by_name(value, message, graph):
    x = tf.fill([1, 2], 0.5)

    def call():
        return stop_token_bce(x, x, tf.constant([2]), POS_WEIGHT, SMOOTHING, value)[0]

    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        (tf.function(call) if graph else call)()


def test_the_smallest_prob_min_keeps_both_bounds_finite():
    """At prob_min = 2**-24 the clip bounds are 2**-24 and 1 - 2**-24, so a
    prediction of 0 or 1 costs a finite loss with a finite target gradient."""
    config = dict(CONFIG, prob_min=SMALLEST_PROB_MIN)
    target = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)
    pred = np.array([[0.0, 1.0, 0.0, 1.0]], np.float32)
    lengths = np.array([4], np.int32)
    sums, _, _, (g_target, g_pred) = _op_and_grads(
        target, pred, lengths, np.ones(1, np.float32), graph=True, config=config
    )
    ref = _numpy_model(target, pred, lengths, config=config)
    np.testing.assert_allclose(sums, ref.sums, rtol=2e-6)
    assert np.isfinite(g_target).all() and not g_pred.any()


def test_long_rows_keep_float32_accuracy(rng):
    """A row of 300001 positions: its sum is accumulated in float32 chunks
    joined in double, so it stays within float32's relative error."""
    target, pred, lengths = _inputs(rng, 2, 300001, "full", ())
    lengths[1] = 250000
    sums, counts, _, _ = _op_and_grads(target, pred, lengths, np.ones(2, np.float32), graph=True)
    ref = _numpy_model(target, pred, lengths)
    np.testing.assert_array_equal(counts, ref.counts)
    np.testing.assert_allclose(sums, ref.sums, rtol=2e-6)


def _stop_ops_in_graph(fn, *args):
    graph = tf.function(fn).get_concrete_function(*args).graph
    return [op.type for op in graph.get_operations() if "StopTokenLoss" in op.type]


def test_the_term_uses_the_fused_op_only_outside_xla_without_a_gpu(monkeypatch):
    from myxtts_loss import terms

    args = (tf.fill([2, 5], 0.5), tf.fill([2, 5], 0.25), tf.constant([5, 2]))

    def value(t, p, n):
        stats = terms.stop_stats(t, p, n)
        return stats.num / stats.den

    assert terms.fused_stop_op_used()
    assert _stop_ops_in_graph(value, *args) == ["MyxttsOps>StopTokenLoss"]
    # A process that sees a GPU keeps the TF-ops form (the CUDA kernels have
    # not run on a GPU yet), as does fused=False.
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["/GPU:0"])
    assert not terms.fused_stop_op_used()
    assert _stop_ops_in_graph(value, *args) == []
    monkeypatch.undo()
    assert (
        _stop_ops_in_graph(lambda t, p, n: terms.stop_stats(t, p, n, fused=False).num, *args) == []
    )


def test_a_reference_loss_keeps_the_stop_term_in_tf_ops(monkeypatch):
    """``implementation="reference"`` is the loss without this project's loss
    ops (what runs where the op library cannot load): its stop term is the
    TF-ops form even where the fused op would be used, and it runs with the
    library made unloadable."""
    from myxtts_loss import XTTSLoss
    from myxtts_ops import _loader

    y_true = {
        "mel_target": tf.fill([2, 5, 3], 0.5),
        "stop_target": tf.constant([[0.0, 0, 0, 0, 1], [0, 1, 0, 0, 0]]),
        "mel_lengths": tf.constant([5, 2]),
    }
    y_pred = {"mel_output": tf.fill([2, 5, 3], 0.25), "stop_tokens": tf.fill([2, 5, 1], 0.3)}

    def value(loss):
        return lambda: loss(y_true, y_pred, training=False)

    fused, reference = XTTSLoss(), XTTSLoss(implementation="reference")
    fused_graph = tf.function(value(fused)).get_concrete_function().graph
    assert any("StopTokenLoss" in op.type for op in fused_graph.get_operations())
    graph = tf.function(value(reference)).get_concrete_function().graph
    assert not [op.type for op in graph.get_operations() if "StopTokenLoss" in op.type]

    expected = float(fused(y_true, y_pred, training=False))

    def missing():
        raise _loader.OpLibraryError("the myxtts-ops op library is missing (test)")

    monkeypatch.setattr(_loader, "load_ops", missing)
    np.testing.assert_allclose(
        float(reference(y_true, y_pred, training=False)), expected, rtol=1e-5
    )
