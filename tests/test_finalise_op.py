"""The finalisation ops (MyxttsOps>FinaliseTerms, MyxttsOps>CombineTotal and its
gradient MyxttsOps>CombineTotalGrad) against their definition in TF ops
(myxtts_loss.finalise.finalise_terms), which they repeat:

* bit for bit the same values, flags, op state, total and raw total, and the
  same gradient of the total with respect to every term's num (a zero's sign
  aside) as the TF form run op by op (eagerly), both eagerly and in a
  tf.function (in a tf.function, Grappler may reassociate the TF form's own
  sums: it then differs from itself eager by a rounding, and the ops do not), over random statistics (NaN, inf, zero and huge counts, values
  outside the clip bounds, weights that overflow, shares that overflow);
* where XTTSLoss runs them (finalise_op_applies): one replica, a float32 mel
  term, outside XLA, with the decision's ops; an XTTSLoss trajectory with every
  MyXTTS head gives the same totals, gradients and reports with or without them;
* bad attributes and inputs are refused with a message naming them.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf

import myxtts_ops
from myxtts_loss import XTTSLoss, finalise, rule, terms
from myxtts_ops import state as op_layout
from myxtts_ops.ops import COMBINE_OP_NAME, FINALISE_OP_NAME

MelOut = collections.namedtuple("MelOut", ["loss", "state"])
FIELDS = ["mel", "other", "finite", "has_valid", "all_bad", "running_mean", "window_variance"]


@pytest.fixture(scope="module", autouse=True)
def _ops():
    myxtts_ops.load_ops()


def _bits(x):
    x = np.asarray(x)
    return (
        x.view(np.uint32)
        if x.dtype == np.float32
        else x.view(np.uint64)
        if x.dtype == np.float64
        else x
    )


def _same(a, b, what, zero_sign=True):
    """The same bits (every NaN alike); ``zero_sign=False``: 0 and -0 alike."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, what
    if a.dtype.kind == "f":
        nan = np.isnan(a)
        np.testing.assert_array_equal(nan, np.isnan(b), err_msg=what)
        if not zero_sign:
            a, b = a + 0.0, b + 0.0
        np.testing.assert_array_equal(_bits(a)[~nan], _bits(b)[~nan], err_msg=what)
    else:
        np.testing.assert_array_equal(a, b, err_msg=what)


def _pick(rng, *choices):
    return choices[int(rng.integers(len(choices)))]


def _f32(x):
    # From a NumPy array: TF's eager constant cache would turn a Python -0.0 into 0.0.
    with np.errstate(over="ignore"):  # 5 * 3e38 is meant to overflow to inf
        return tf.constant(np.array(x, np.float32))


def _random_case(rng):
    """Statistics, settings and a mel weight, common values mixed with NaN, inf,
    -0, overflowing and subnormal ones, huge and negative counts, negative and
    NaN weights and values on the clip bounds."""
    n = int(rng.integers(1, 11))
    mel_index = int(rng.integers(n))
    names = [f"t{i}" if i != mel_index else "mel_loss" for i in range(n)]

    def number():
        return _pick(
            rng,
            float(rng.uniform(-3, 30)),
            float(rng.uniform(0, 2)),
            0.0,
            -0.0,
            np.nan,
            np.inf,
            -np.inf,
            3e38,
            float(rng.uniform(1e30, 3e38)),
            25.0,
            1e-40,
        )

    stats, weights, clips = {}, {}, {}
    for name in names:
        den = _pick(
            rng,
            *[float(rng.integers(1, 50))] * 4,
            float(rng.integers(1, 5)),
            0.0,
            -0.0,
            1e-30,
            np.nan,
            np.inf,
            3e38,
        )
        num = number() if rng.random() < 0.4 else float(rng.uniform(0, 5)) * max(den, 1.0)
        bad = _pick(rng, 0.0, 0.0, 0.0, -0.0, float(rng.integers(1, 4)), np.nan, np.inf, 1e20)
        stats[name] = terms.TermStats(_f32(num), _f32(den), _f32(bad))
        weights[name] = _pick(
            rng, 1.0, 0.1, 2.5, 0.0, float(rng.uniform(0, 10)), 1e38, -1.5, np.nan
        )
        clips[name] = _pick(rng, None, None, (0.0, 25.0), (0.5, 1.5), (0.0, 0.0))
    valid = _pick(rng, 0, int(rng.integers(1, 1000)), int(rng.integers(0, 4)), 2**62, -(2**62), -1)
    mel_valid = tf.constant(np.array(valid, np.int64))

    def state():
        s = rng.uniform(0, 100, op_layout.STATE_SIZE)
        s[int(rng.integers(op_layout.STATE_SIZE))] = _pick(rng, np.nan, -0.0, 1e300, 5.0)
        return tf.constant(s, tf.float64)

    mel_out = MelOut(_f32(0.0), state())
    weight = _f32(_pick(rng, 1.0, 2.5, float(rng.uniform(0.5, 5)), 3e38, 0.0, np.nan, np.inf))
    return stats, weights, clips, mel_valid, mel_out, state(), weight


def _finalise_stats(stats, case, fused):
    """finalise_terms on one replica for ``stats`` and the rest of ``case``."""
    _, weights, clips, mel_valid, mel_out, old_state, _ = case
    return finalise.finalise_terms(
        stats,
        weights,
        clips,
        mel_valid,
        mel_out,
        old_state,
        replicas=1,
        op_state_is_term=True,
        update_state=None,
        fused=fused,
    )


def _finalise(case, fused):
    stats, weight = case[0], case[6]
    nums = [s.num for s in stats.values()]
    with tf.GradientTape() as tape:
        tape.watch(nums)
        fin = _finalise_stats(stats, case, fused)
        total, raw = fin.combine(weight)
    grads = tape.gradient(total, nums)
    grads = [tf.zeros([]) if g is None else g for g in grads]
    return fin._replace(combine=None), total, raw, grads


def _compare(ref, got, where):
    (rf, rt, rr, rg), (gf, gt, gr, gg) = ref, got
    for field in FIELDS + ["new_op_state"]:
        _same(getattr(gf, field), getattr(rf, field), f"{field}: {where}")
    for name in rf.values:
        _same(gf.values[name], rf.values[name], f"value {name}: {where}")
    _same(gt, rt, f"total: {where}")
    _same(gr, rr, f"raw: {where}")
    # The gradient's zeros may differ in sign: TF's gradient graph reaches
    # some through other operations than the kernel's selections.
    for i, (a, b) in enumerate(zip(gg, rg)):
        _same(a, b, f"grad of num {i}: {where}", zero_sign=False)


def test_ops_match_tf_ops_bit_for_bit(rng):
    graph = tf.function(lambda case, fused: _finalise(case, fused))
    seen = collections.Counter()
    for _ in range(300):
        case = _random_case(rng)
        where = str([(k, [float(x) for x in s]) for k, s in case[0].items()]) + str(case[1:4])
        ref = _finalise(case, False)
        _compare(ref, _finalise(case, True), "eager " + where)
        fin, total = ref[0], float(ref[1])
        seen["finite"] += int(bool(fin.finite))
        seen["has_valid"] += int(bool(fin.has_valid))
        seen["all_bad"] += int(bool(fin.all_bad))
        seen["zero total"] += int(total == 0.0)
        seen["nonzero total"] += int(total != 0.0)
        seen["non-finite grad"] += int(any(not np.isfinite(float(g)) for g in ref[3]))
        seen["-0 value"] += int(any(np.signbit(float(v)) and v == 0 for v in fin.values.values()))
        seen["op state bumped"] += int(not np.isfinite(float(fin.mel)))
    # In a tf.function (a trace per case: the settings are Python values): the
    # ops give the eager TF form's bits; the TF form itself, rewritten by
    # Grappler, stays within the rounding of a reassociated sum of at most 10
    # terms (10 eps of the sum of their magnitudes: cancellation between
    # weights of both signs can make that many ulps of the total).
    for _ in range(30):
        case = _random_case(rng)
        eager = _finalise(case, False)
        _compare(eager, graph(case, True), "graph")
        in_graph = graph(case, False)
        fin, weights, weight = eager[0], case[1], float(case[6])
        parts = [abs(weight * float(fin.mel))] + [
            abs(float(np.float32(weights[k])) * float(v))
            for k, v in fin.values.items()
            if k != "mel_loss"
        ]
        scale = min(sum(p for p in parts if np.isfinite(p)), 3.4e38)
        np.testing.assert_allclose(in_graph[1], eager[1], rtol=0, atol=10 * 1.2e-7 * scale)
    # The cases reach every branch (a call with every term finite and
    # finite-weighted is the rarest: some 5 % of these cases).
    least = dict.fromkeys(
        ["has_valid", "all_bad", "zero total", "nonzero total", "non-finite grad", "-0 value"], 10
    )
    least.update({"finite": 2, "op state bumped": 10})
    assert all(seen[k] > n for k, n in least.items()), seen


def _higher_order(case, fused):
    """(d/du of sum_i d total/d num_i * u, the forward-mode derivative of the
    total along tangents t, and the sums of the magnitudes of their terms) for
    the case's statistics."""
    stats, weight = case[0], case[6]
    nums = [s.num for s in stats.values()]
    tangents = [tf.constant(float(i % 3) * 0.75 - 0.75) for i in range(len(nums))]  # 0 included

    def total_of(nums):
        fresh = {name: s._replace(num=x) for (name, s), x in zip(stats.items(), nums)}
        return _finalise_stats(fresh, case, fused).combine(weight)[0]

    u = tf.constant(1.5)
    with tf.GradientTape() as outer:
        outer.watch(u)
        with tf.GradientTape() as inner:
            inner.watch(nums)
            total = total_of(nums)
        grads = inner.gradient(total, nums, output_gradients=u)
        summed = tf.add_n([g for g in grads if g is not None])
    second = outer.gradient(summed, u)
    with tf.autodiff.ForwardAccumulator(nums, tangents) as acc:
        total = total_of(nums)
    first = [0.0 if g is None else abs(float(g)) / 1.5 for g in grads]
    scales = (sum(first), sum(abs(float(t)) * g for t, g in zip(tangents, first)))
    return second, acc.jvp(total), scales


def test_second_order_and_forward_mode_match_the_tf_ops(rng):
    """The gradient op has a gradient (the TF form's gradient is linear in the
    upstream gradient), so double backprop and forward mode through the total
    give the TF form's values (within a rounding, where they are finite)
    instead of a silent 0."""
    checked = 0
    for _ in range(120):
        case = _random_case(rng)
        (s_tf, j_tf, scales), (s_op, j_op, _) = (_higher_order(case, f) for f in (False, True))
        for a, b, scale in ((s_op, s_tf, scales[0]), (j_op, j_tf, scales[1])):
            a = 0.0 if a is None else float(a)
            b = 0.0 if b is None else float(b)
            # Where the TF form's derivative is not finite (an inf tangent
            # times a zero weight, say), the two forms may differ. Otherwise
            # both sum the same terms, maybe in another order: within 10 eps
            # of the sum of their magnitudes.
            if np.isfinite(b) and abs(b) < 1e30 and np.isfinite(scale):
                np.testing.assert_allclose(a, b, rtol=0, atol=10 * 1.2e-7 * scale + 1e-30)
                checked += int(b != 0)
    assert checked > 15


def test_op_applies_where_the_loss_runs_one_replica_in_float32():
    stats = {
        "mel_loss": terms.TermStats(*[tf.constant(1.0)] * 3),
        "stop_loss": terms.TermStats(*[tf.constant(1.0)] * 3),
    }
    weights = {"mel_loss": 1.0, "stop_loss": 0.1}
    clips = {"mel_loss": None, "stop_loss": (0.0, 25.0)}
    mel = MelOut(tf.constant(1.0), None)

    def applies(**kw):
        args = dict(
            stats=stats,
            weights=weights,
            clips=clips,
            mel_out=mel,
            replicas=1,
            op_state_is_term=True,
            host_ops=True,
        )
        args.update(kw)
        return finalise.finalise_op_applies(**args)

    assert applies()
    assert not applies(host_ops=False)
    assert not applies(replicas=2)
    assert not applies(op_state_is_term=False)
    assert not applies(mel_out=None)
    assert not applies(mel_out=MelOut(tf.constant(1.0, tf.float64), None))
    assert not applies(weights={"mel_loss": 1.0, "stop_loss": tf.constant(0.1)})
    assert not applies(clips={"mel_loss": None, "stop_loss": (0.0, 0.1)})  # not a float32


@pytest.mark.skipif(tf.config.list_logical_devices("GPU"), reason="a GPU is visible")
def test_xtts_loss_runs_the_ops_in_a_plain_graph_only():
    rng = np.random.default_rng(0)
    y_true = {
        "mel_target": tf.constant(rng.standard_normal((2, 6, 4)), tf.float32),
        "mel_lengths": tf.constant([6, 3]),
        "stop_target": tf.constant(rng.uniform(size=(2, 6)) > 0.5, tf.float32),
    }
    y_pred = {
        "mel_output": tf.constant(rng.standard_normal((2, 6, 4)), tf.float32),
        "stop_tokens": tf.constant(rng.uniform(0.1, 0.9, (2, 6)), tf.float32),
    }
    loss_fn = XTTSLoss()
    for training in (True, False):
        graph = tf.function(lambda t=training: loss_fn(y_true, y_pred, training=t))
        types = {op.type for op in graph.get_concrete_function().graph.get_operations()}
        assert {FINALISE_OP_NAME, COMBINE_OP_NAME} <= types, training
    xla = tf.function(lambda: loss_fn(y_true, y_pred), jit_compile=True)
    assert not {FINALISE_OP_NAME, COMBINE_OP_NAME} & {
        op.type for op in xla.get_concrete_function().graph.get_operations()
    }
    wide = {
        k: tf.cast(v, tf.float64) if k.startswith("mel_") and k != "mel_lengths" else v
        for k, v in y_true.items()
    }
    wide_pred = dict(y_pred, mel_output=tf.cast(y_pred["mel_output"], tf.float64))
    graph = tf.function(lambda: loss_fn(wide, wide_pred))
    assert FINALISE_OP_NAME not in {
        op.type for op in graph.get_concrete_function().graph.get_operations()
    }


def test_xtts_loss_trajectory_is_the_same_with_the_ops(monkeypatch):
    """60 training calls, every MyXTTS head, inputs with NaN in valid frames and
    in padding every few steps: the same totals, gradients, reported terms and
    state with the ops (in a tf.function) and with the TF ops (eagerly)."""
    from myxtts_ops.tools.term_shares import myxtts_inputs

    rng = np.random.default_rng(11)
    sets = myxtts_inputs(rng, 4, 3, 40, 6, 10, 2, all_heads=True)
    settings = dict(
        adaptive_weight_min_warmup_steps=5,
        adaptive_weight_cooling_period=3,
        adaptive_weight_min_stable_steps=2,
        adaptive_weight_variance_threshold=10.0,
    )
    losses = {"op": XTTSLoss(**settings), "tf": XTTSLoss(**settings)}
    steps = {}
    for name, loss_fn in losses.items():
        fused = name == "op"

        def step(yt, yp, loss_fn=loss_fn, fused=fused):
            with monkeypatch.context() as m:
                if not fused:
                    m.setattr(finalise, "finalise_op_applies", lambda *a: False)
                with tf.GradientTape() as tape:
                    tape.watch(yp)
                    total = loss_fn(yt, yp)
                return total, tape.gradient(total, yp)

        # The ops in a graph against the TF form op by op (in a graph,
        # Grappler may reassociate its sums; see above).
        steps[name] = tf.function(step) if fused else step
    for i in range(60):
        yt, yp = (dict(d) for d in sets[i % len(sets)])
        if i % 7 == 6:
            out = yp["mel_output"].numpy()
            out[0, 0, 0] = np.nan  # a valid frame
            out[-1, -1, -1] = np.inf  # padding of a short sample
            yp["mel_output"] = tf.constant(out)
        if i % 11 == 10:
            yp["duration_pred"] = yp["duration_pred"] * np.float32(np.inf)
        (t_op, g_op), (t_tf, g_tf) = (steps[n](yt, yp) for n in ("op", "tf"))
        _same(t_op.numpy(), t_tf.numpy(), f"total at {i}")
        for key in g_tf:
            if g_tf[key] is not None:
                _same(g_op[key].numpy(), g_tf[key].numpy(), f"grad {key} at {i}", zero_sign=False)
        a, b = losses["op"].get_losses(), losses["tf"].get_losses()
        assert {k: float(v) for k, v in a.items()} == {k: float(v) for k, v in b.items()}, i
        for field in list(rule.RULE_STATE) + ["op_state", "all_nonfinite_mel_steps"]:
            _same(
                getattr(losses["op"]._state, field).numpy(),  # noqa: SLF001
                getattr(losses["tf"]._state, field).numpy(),  # noqa: SLF001
                f"{field} at {i}",
            )
    # The graph held the ops (else this compared the TF form with itself).
    yt, yp = sets[0]
    graph = steps["op"].get_concrete_function(yt, yp).graph
    assert {FINALISE_OP_NAME, COMBINE_OP_NAME} <= {op.type for op in graph.get_operations()}


def test_bad_attributes_and_inputs_are_refused():
    lib = myxtts_ops.load_ops()
    one = [tf.constant(1.0)]
    state = tf.zeros([op_layout.STATE_SIZE], tf.float64)
    base = dict(
        num=one,
        den=one,
        nonfinite=one,
        mel_valid=tf.constant(1, tf.int64),
        mel_state=state,
        old_state=state,
        weights=[1.0],
        clipped=[False],
        clip_lo=[0.0],
        clip_hi=[0.0],
        mel_index=0,
    )
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="weights"):
        lib.myxtts_ops_finalise_terms(**dict(base, weights=[1.0, 2.0]))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="mel_index"):
        lib.myxtts_ops_finalise_terms(**dict(base, mel_index=1))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="clip"):
        lib.myxtts_ops_finalise_terms(**dict(base, clip_lo=[]))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="old_state"):
        lib.myxtts_ops_finalise_terms(**dict(base, old_state=tf.zeros([3], tf.float64)))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="num"):
        lib.myxtts_ops_finalise_terms(**dict(base, num=[tf.ones([2])]))
    combine = dict(
        weight=one[0],
        mel=one[0],
        other=one[0],
        mel_out=one[0],
        other_out=one[0],
        num=one,
        den=one,
        kept=tf.constant([True]),
        inside=tf.constant([True]),
        weights=[1.0],
        mel_index=0,
    )
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="kept"):
        lib.myxtts_ops_combine_total(**dict(combine, kept=tf.constant([True, False])))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="weights"):
        lib.myxtts_ops_combine_total(**dict(combine, weights=[]))
    grad = {k: v for k, v in combine.items() if k not in ("num", "other")}
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="inside"):
        lib.myxtts_ops_combine_total_grad(grad_total=one[0], **dict(grad, inside=tf.constant(True)))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="mel_index"):
        lib.myxtts_ops_combine_total_grad(grad_total=one[0], **dict(grad, mel_index=3))
