"""The decision ops (MyxttsOps>AdaptiveWeightStep, MyxttsOps>SmoothingStep) against
the rule's definition in TF ops (myxtts_loss.rule), which they repeat:

* the op's inputs and outputs are RULE_STATE's and OBSERVATIONS' fields, in order;
* bit for bit the same new state, weight and events over random states and
  observations (NaN, inf, negative running totals, every gate, both bounds) and
  settings, and the same smoothing, eagerly and in a tf.function;
* where XTTSLoss runs them (rule_op_used): plain graphs and eager on the CPU,
  never under XLA; an XTTSLoss trajectory is the same with the ops or the TF ops;
* a non-scalar input is refused.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import op_def_registry

import myxtts_ops
from myxtts_loss import XTTSLoss, rule
from myxtts_loss.config import XTTSLossConfig
from myxtts_ops.ops import RULE_OP_NAME, SMOOTHING_OP_NAME

CFG = XTTSLossConfig()
EVENTS = rule.EVENTS


@pytest.fixture(scope="module", autouse=True)
def _ops():
    myxtts_ops.load_ops()


def _arg_dtypes(args):
    return [(a.name, tf.as_dtype(a.type)) for a in args]


def test_op_signature_is_the_rule_state():
    op = op_def_registry.get(RULE_OP_NAME)
    state = [(n, d) for n, (d, _) in rule.RULE_STATE.items()]
    observations = list(rule.OBSERVATIONS.items())
    assert _arg_dtypes(op.input_arg) == state + observations + [("enabled", tf.bool)]
    assert _arg_dtypes(op.output_arg) == (
        [("new_" + n, d) for n, d in state]
        + [("weight", tf.float32)]
        + [(e, tf.bool) for e in EVENTS]
    )
    smoothing = op_def_registry.get(SMOOTHING_OP_NAME)
    names = [a.name for a in smoothing.output_arg]
    assert names[:2] == ["new_" + n for n in rule.SMOOTHING_STATE]


def _random_case(rng):
    s = int(rng.integers(0, 200))
    pick = lambda *xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    state = {
        "step_count": s,
        "current_mel_weight": f32(pick(1.0, 5.0, rng.uniform(1, 5), 1.05)),
        "previous_mel_weight": f32(rng.uniform(1, 5)),
        "last_weight_change_step": int(rng.integers(0, s + 1)),
        "consecutive_stable_steps": int(rng.integers(0, 15)),
        "running_total_loss": f32(pick(rng.uniform(-3, 3), 0.0, -0.0, np.nan, np.inf, 1e30)),
        "running_total_initialized": bool(rng.random() < 0.8),
        "nonfinite_steps": int(rng.integers(0, 5)),
        "spike_count": int(rng.integers(0, 5)),
        "weight_changes": int(rng.integers(0, 5)),
        "rejected_changes": int(rng.integers(0, 5)),
    }
    obs = {
        "mel": f32(pick(rng.uniform(0, 2), rng.uniform(0, 20), np.nan, np.inf, -np.inf, 3e3, 1e38)),
        "other": f32(pick(0.0, rng.uniform(-1, 1), np.nan, 1e38)),
        "finite": bool(rng.random() < 0.9),
        "has_valid": bool(rng.random() < 0.95),
        "running_mean": f32(pick(0.0, rng.uniform(0.1, 2), -rng.uniform(0.1, 2), 1e-12, np.nan)),
        "window_variance": f32(pick(rng.uniform(0, 0.7), np.nan)),
        "growing": bool(rng.random() < 0.2),
    }
    return state, obs, bool(rng.random() < 0.9)


def _tensors(state, obs):
    return (
        {k: tf.constant(v, rule.RULE_STATE[k][0]) for k, v in state.items()},
        {k: tf.constant(v, rule.OBSERVATIONS[k]) for k, v in obs.items()},
    )


def _bits(x):
    x = np.asarray(x)
    return x.view(np.uint32) if x.dtype == np.float32 else x


SETTINGS = [
    {},
    dict(
        adaptive_weight_min_warmup_steps=0,
        adaptive_weight_cooling_period=0,
        adaptive_weight_min_stable_steps=1,
        adaptive_weight_max_weighted_loss=10.0,
        max_loss_spike_threshold=1.3,
        spike_reference_rate=0.37,
    ),
    dict(
        adaptive_weight_min_warmup_steps=3,
        adaptive_weight_cooling_period=2,
        adaptive_weight_min_stable_steps=2,
        adaptive_weight_max_change_percent=0.5,
        adaptive_weight_loss_high_ratio=1.0,
        adaptive_weight_loss_low_ratio=1.0,
        adaptive_weight_variance_threshold=0.3,
        max_loss_spike_threshold=3.0,
    ),
]


@pytest.mark.parametrize("settings", range(len(SETTINGS)))
def test_op_matches_tf_ops_bit_for_bit(settings, rng):
    c = CFG.replace(**SETTINGS[settings])

    def both(st, ob, en):
        return tuple(rule.adaptive_weight_step(st, ob, c, en, fused=f) for f in (False, True))

    step = tf.function(both)
    seen = {e: 0 for e in EVENTS}
    for case in range(600):
        state, obs, enabled = _random_case(rng)
        if settings:
            state["step_count"] = int(rng.integers(0, 12))
            state["last_weight_change_step"] = int(rng.integers(0, state["step_count"] + 1))
        if case % 50 == 49:  # int64 ends: both forms wrap
            for k in ("step_count", "consecutive_stable_steps", "spike_count", "nonfinite_steps"):
                state[k] = int(np.iinfo(np.int64).max)
            state["last_weight_change_step"] = int(np.iinfo(np.int64).min)
        (ts, tw, te), (os_, ow, oe) = step(*_tensors(state, obs), tf.constant(enabled))
        where = f"{state} {obs} enabled={enabled}"
        np.testing.assert_array_equal(_bits(ow.numpy()), _bits(tw.numpy()), err_msg=where)
        for k in rule.RULE_STATE:
            np.testing.assert_array_equal(
                _bits(os_[k].numpy()), _bits(ts[k].numpy()), err_msg=f"{k}: {where}"
            )
        for e in EVENTS:
            assert bool(oe[e]) == bool(te[e]), (e, where)
            seen[e] += int(bool(te[e]))
    # The cases reach every event (decisions need the short gates of the
    # non-default settings).
    assert all(n > 0 for e, n in seen.items() if settings or e in ("clean", "spike")), seen


@pytest.mark.parametrize("alpha", [0.1, 0.6])
def test_smoothing_op_matches_tf_ops(alpha, rng):
    """The same bits eagerly and in a tf.function, where Grappler may rewrite the
    TF form's divisions by a constant (which is why that form divides in
    float64 and rounds once), over histories that put rho on both sides of
    theta, with cancellation, NaN, inf and negative totals."""
    cfg = CFG.replace(loss_smoothing_factor=alpha, max_loss_spike_threshold=1.5)
    graph = tf.function(
        lambda st, raw, n: tuple(
            rule.smoothing_step(st, raw, n, cfg, fused=f) for f in (False, True)
        )
    )
    state = {"total_history": tf.zeros([10]), "smoothing_running_total": tf.constant(0.0)}
    damped = 0
    for n in range(1, 400):
        raw = float(rng.choice([rng.uniform(0.5, 1.5), rng.uniform(1.4, 3.0), rng.uniform(10, 50)]))
        raw = {97: np.nan, 98: np.inf, 99: -1.0, 150: 1e8, 152: -1e8}.get(n, raw)
        args = (state, tf.constant(raw, tf.float32), tf.constant(n, tf.int64))
        forms = [rule.smoothing_step(*args, cfg, fused=f) for f in (False, True)]
        forms += list(graph(*args))
        (ts, tout), *others = forms
        for os_, oout in others:
            for k in rule.SMOOTHING_STATE:
                np.testing.assert_array_equal(
                    _bits(os_[k].numpy()), _bits(ts[k].numpy()), err_msg=f"{k} at step {n}"
                )
            np.testing.assert_array_equal(_bits(oout.numpy()), _bits(tout.numpy()), f"step {n}")
        damped += int(n > 10 and np.isfinite(raw) and float(tout) != raw)
        state = ts
    assert damped > 0


@pytest.mark.skipif(tf.config.list_logical_devices("GPU"), reason="a GPU is visible")
def test_rule_op_used_outside_xla_only():
    assert rule.rule_op_used()  # eager, on the CPU
    seen = {}

    def probe(where):
        seen[where] = rule.rule_op_used()
        return tf.constant(0.0)

    tf.function(lambda: probe("graph"))()
    tf.function(lambda: probe("xla"), jit_compile=True)()
    assert seen == {"graph": True, "xla": False}


@pytest.mark.skipif(tf.config.list_logical_devices("GPU"), reason="a GPU is visible")
def test_xtts_loss_runs_the_ops_in_a_plain_graph_only():
    rng = np.random.default_rng(0)
    y_true = {
        "mel_target": tf.constant(rng.standard_normal((2, 6, 4)), tf.float32),
        "mel_lengths": tf.constant([6, 3]),
    }
    y_pred = {"mel_output": tf.constant(rng.standard_normal((2, 6, 4)), tf.float32)}
    loss_fn = XTTSLoss()
    plain = tf.function(lambda: loss_fn(y_true, y_pred)).get_concrete_function().graph
    types = {op.type for op in plain.get_operations()}
    assert {RULE_OP_NAME, SMOOTHING_OP_NAME} <= types
    validation = tf.function(lambda: loss_fn(y_true, y_pred, training=False))
    types = {op.type for op in validation.get_concrete_function().graph.get_operations()}
    assert not {RULE_OP_NAME, SMOOTHING_OP_NAME} & types
    reference = XTTSLoss(implementation="reference")
    graph = tf.function(lambda: reference(y_true, y_pred)).get_concrete_function().graph
    assert not {RULE_OP_NAME, SMOOTHING_OP_NAME} & {op.type for op in graph.get_operations()}


def test_xtts_loss_trajectory_is_the_same_with_the_ops(monkeypatch):
    """300 training calls of one XTTSLoss with the ops and one with the TF ops, on
    the same inputs (weights moving, spikes, non-finite steps): the same state
    and smoothed total after every call."""
    rng = np.random.default_rng(7)
    settings = dict(
        adaptive_weight_min_warmup_steps=5,
        adaptive_weight_cooling_period=3,
        adaptive_weight_min_stable_steps=2,
        adaptive_weight_variance_threshold=10.0,
    )
    with_ops, with_tf_ops = XTTSLoss(**settings), XTTSLoss(**settings)
    calls = {}
    for name, loss_fn in (("op", with_ops), ("tf", with_tf_ops)):
        fused = name == "op"

        def call(yt, yp, loss_fn=loss_fn, fused=fused):
            with monkeypatch.context() as m:
                m.setattr(rule, "rule_op_used", lambda: fused)
                return loss_fn(yt, yp)

        calls[name] = tf.function(call)
    changes = 0
    for step in range(300):
        scale = [0.3, 1.0, 2.0][step % 3] * (40.0 if step % 41 == 40 else 1.0)
        target = rng.standard_normal((2, 8, 4)).astype(np.float32)
        output = (target + scale * rng.standard_normal((2, 8, 4))).astype(np.float32)
        if step % 29 == 28:
            output[0, 0, 0] = np.nan
        y_true = {"mel_target": tf.constant(target), "mel_lengths": tf.constant([8, 5])}
        y_pred = {"mel_output": tf.constant(output)}
        totals = [calls[n](y_true, y_pred).numpy() for n in ("op", "tf")]
        assert totals[0] == totals[1], step
        for name in rule.RULE_STATE:
            a, b = getattr(with_ops._state, name), getattr(with_tf_ops._state, name)  # noqa: SLF001
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{name} at {step}")
        np.testing.assert_array_equal(
            with_ops.get_smoothed_total_loss().numpy(),
            with_tf_ops.get_smoothed_total_loss().numpy(),
        )
        changes = int(with_ops._state.weight_changes.numpy())  # noqa: SLF001
    assert changes >= 3


def test_non_scalar_input_is_refused():
    state, obs, _ = _random_case(np.random.default_rng(3))
    st, ob = _tensors(state, obs)
    ob["mel"] = tf.constant([1.0, 2.0])
    with pytest.raises(
        (tf.errors.InvalidArgumentError, ValueError), match="'mel' must be a scalar|rank 0"
    ):
        rule.adaptive_weight_step(st, ob, CFG, tf.constant(True), fused=True)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank|vector"):
        rule.smoothing_step(
            {"total_history": tf.zeros([]), "smoothing_running_total": tf.constant(0.0)},
            tf.constant(1.0),
            tf.constant(3, tf.int64),
            CFG,
            fused=True,
        )
