"""XTTSLoss (SPEC 4): decision logic, safety, metrics, graph behaviour.

Most tests drive the loss with mel pairs whose L1 loss is exactly a chosen
value (``y_true = 0``, ``y_pred = L`` everywhere), and compare the weight
trajectory with a plain-Python model of SPEC 3.4 + 4.1 (``Oracle``).
Tests parametrised over ``impl`` run with the fused op (when its library
loads) and with the pure-TF reference.
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from myxtts.config import XTTSLossConfig
from myxtts.training.losses import XTTSLoss


def _fused_available():
    try:
        import myxtts_ops

        myxtts_ops.load_ops()
        return True
    except Exception:  # noqa: BLE001 - any load failure means "not built"
        return False


FUSED = _fused_available()
DEFAULT_IMPL = "fused" if FUSED else "reference"
IMPLS = [
    pytest.param("fused", marks=pytest.mark.skipif(not FUSED, reason="fused op library not built")),
    "reference",
]
B, T, M = 2, 4, 3
OP_TYPE = "MyxttsOps>MaskedMelLoss"


# --------------------------------------------------------------------- oracle
class Oracle:
    """Plain-Python SPEC 3.4 statistics + SPEC 4.1 decisions (float64)."""

    def __init__(self, cfg=None, **settings):
        c = (cfg or XTTSLossConfig()).replace(**settings) if settings else (cfg or XTTSLossConfig())
        self.c = c
        self.w = self.prev = float(np.float32(c.mel_loss_weight))
        self.enabled = c.use_adaptive_weights
        self.s = self.last = self.consec = 0
        self.rt, self.rt_init = 0.0, False
        self.k, self.rm, self.ring, self.var = 0, 0.0, [], 0.0
        self.norms = []
        self.changes, self.rejected, self.spikes, self.nonfinite = [], 0, 0, 0

    def observe(self, norm):
        if math.isfinite(norm):
            self.norms.append(float(np.float32(norm)))

    def step(self, L, nonfinite=False, other=0.0):
        c = self.c
        L = float(np.float32(L))
        self.s += 1
        s = self.s
        if not nonfinite:  # the op's statistics (SPEC 3.4)
            self.k += 1
            decay = min(self.k / 1000.0, 0.99)
            self.rm = decay * self.rm + (1 - decay) * L
            self.ring = (self.ring + [L])[-10:]
            self.var = float(np.var(self.ring)) if len(self.ring) >= 2 else 0.0
        w = self.w
        total_pre = w * L + other
        finite = not nonfinite and math.isfinite(total_pre)
        check = s > 10 and self.rt_init
        theta = c.max_loss_spike_threshold
        limit = (theta if self.rt >= 0 else 2.0 - theta) * self.rt  # above rt by (theta-1)|rt|
        spike = finite and check and total_pre > limit
        stable = finite and not spike
        gate = (
            self.enabled
            and s >= c.adaptive_weight_min_warmup_steps
            and s - self.last >= c.adaptive_weight_cooling_period
            and self.var < c.adaptive_weight_variance_threshold
        )
        passed = stable and gate
        self.consec = self.consec + 1 if passed else 0
        if passed and self.consec >= c.adaptive_weight_min_stable_steps:
            ratio = min(max(L / max(abs(self.rm), 1e-8), 0.1), 10.0)
            n = self.norms[-11:]
            growing = (
                len(n) >= 2
                and n[-1] > c.adaptive_weight_gradient_growth_factor * np.mean(n[:-1])
                and n[-1] > c.gradient_norm_threshold
            )
            if ratio > c.adaptive_weight_loss_high_ratio and not growing:
                d = 1
            elif ratio < c.adaptive_weight_loss_low_ratio or growing:
                d = -1
            else:
                d = 0
            if d:
                lo, hi = c.adaptive_weight_min_weight, c.adaptive_weight_max_weight
                cand = float(
                    np.float32(
                        min(
                            max(
                                np.float32(w)
                                * np.float32(1 + c.adaptive_weight_max_change_percent * d),
                                lo,
                            ),
                            hi,
                        )
                    )
                )
                if (
                    cand != w
                    and lo <= cand <= hi
                    and cand * L <= c.adaptive_weight_max_weighted_loss
                ):
                    self.prev, self.w, self.last, self.consec = w, cand, s, 0
                    self.changes.append((s, d))
                else:
                    self.rejected += 1
        total = self.w * L + other
        if finite:
            a = c.spike_reference_rate
            if self.rt_init:
                x = min(total, limit) if check and self.rt > 0 else total
                self.rt = (1 - a) * self.rt + a * x
            else:
                self.rt, self.rt_init = total, True
        self.spikes += int(spike)
        self.nonfinite += int(not finite)
        return self.w


# -------------------------------------------------------------------- drivers
def _step_body(loss_fn):
    def step(L, nan):
        yt = tf.zeros([B, T, M])
        yp = tf.fill([B, T, M], L)
        bad = tf.where(nan, tf.constant(np.nan, tf.float32), L)
        yp = tf.tensor_scatter_nd_update(yp, [[0, 1, 2]], tf.reshape(bad, [1]))
        return loss_fn(
            {"mel_target": yt, "mel_lengths": tf.constant([T, T - 1])}, {"mel_output": yp}
        )

    return step


SIG = [tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.bool)]


def make_step(loss_fn, mode="function"):
    body = _step_body(loss_fn)
    if mode == "eager":
        return lambda L, nan: body(tf.constant(L, tf.float32), tf.constant(nan))
    fn = tf.function(body, input_signature=SIG, jit_compile=(mode == "xla"))
    return lambda L, nan: fn(tf.constant(L, tf.float32), tf.constant(nan))


def run(loss_fn, losses, nans=None, norms=None, mode="function", step=None, observe=None):
    """Drive ``loss_fn``; returns (weights after each step, returned totals)."""
    step = step or make_step(loss_fn, mode)
    if norms is not None and observe is None:
        observe = tf.function(
            loss_fn.observe_gradient_norm, input_signature=[tf.TensorSpec([], tf.float32)]
        )
    weights, totals = [], []
    for i, L in enumerate(losses):
        nan = bool(nans[i]) if nans is not None else False
        totals.append(float(step(float(L), nan)))
        weights.append(float(loss_fn.current_mel_weight.numpy()))
        if norms is not None and norms[i] is not None:
            observe(tf.constant(norms[i], tf.float32))
    return np.array(weights), np.array(totals)


def run_oracle(oracle, losses, nans=None, norms=None):
    weights = []
    for i, L in enumerate(losses):
        weights.append(oracle.step(L, bool(nans[i]) if nans is not None else False))
        if norms is not None and norms[i] is not None:
            oracle.observe(norms[i])
    return np.array(weights)


def changes_of(weights, base=2.5):
    out, prev = [], base
    for i, w in enumerate(weights):
        if w != prev:
            out.append((i + 1, 1 if w > prev else -1))
        prev = w
    return out


def alternating(n):
    return [0.3 if s % 2 else 1.0 for s in range(1, n + 1)]


def all_finite(loss_fn):
    for v in loss_fn.state_variables:
        x = v.numpy()
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            return False
    return True


# ---------------------------------------------------------------- SPEC 4.1 example
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_spec_trajectory(impl, mode):
    loss_fn = XTTSLoss(implementation=impl)
    weights, totals = run(loss_fn, alternating(240), mode=mode)
    assert changes_of(weights) == [(109, -1), (168, 1), (227, -1)]
    np.testing.assert_allclose(weights[108], 2.5 * 0.95, rtol=1e-6)
    np.testing.assert_allclose(weights[167], 2.5 * 0.95 * 1.05, rtol=1e-6)
    # The returned total uses the weight after this call's decision.
    np.testing.assert_allclose(totals[108], weights[108] * 0.3, rtol=1e-6)
    np.testing.assert_allclose(totals, weights * np.array(alternating(240)), rtol=1e-6)
    m = loss_fn.get_adaptive_weight_metrics()
    assert int(m["weight_changes"]) == 3 and int(m["rejected_changes"]) == 0
    np.testing.assert_allclose(float(m["previous_mel_weight"]), weights[167], rtol=1e-6)
    assert int(m["steps_since_weight_change"]) == 240 - 227
    assert int(loss_fn.step_count.numpy()) == 240
    oracle = Oracle()
    np.testing.assert_allclose(weights, run_oracle(oracle, alternating(240)), rtol=1e-6)


# ------------------------------------------------------ warmup / cooling / stable
@pytest.mark.parametrize(
    "settings, expected",
    [
        (dict(adaptive_weight_min_warmup_steps=150), [(159, -1), (218, 1)]),
        # 148 (even) has ratio 1.098 < 1.1, so the next decision is 149 (odd, down).
        (dict(adaptive_weight_cooling_period=30), [(109, -1), (149, -1), (188, 1), (227, -1)]),
        (dict(adaptive_weight_min_stable_steps=3), [(103, -1), (155, -1), (207, -1)]),
        (dict(adaptive_weight_variance_threshold=0.1), []),  # variance 0.1225: gate never passes
        # "No smoothing" leaves the spike reference (its own rate) and the rule alone.
        (dict(loss_smoothing_factor=0.0), [(109, -1), (168, 1), (227, -1)]),
    ],
)
def test_gate_settings(settings, expected):
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL, **settings)
    weights, _ = run(loss_fn, alternating(240))
    oracle_w = run_oracle(Oracle(**settings), alternating(240))
    np.testing.assert_allclose(weights, oracle_w, rtol=1e-6)
    assert changes_of(weights) == expected


def test_no_change_before_warmup_or_inside_cooling():
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    weights, _ = run(loss_fn, alternating(170))
    assert np.all(weights[:108] == 2.5)
    assert np.all(weights[108:167] == weights[108])


def _injected(n, at, value):
    losses = alternating(n)
    losses[at - 1] = value
    return losses


@pytest.mark.parametrize("kind", ["variance", "nan", "spike"])
def test_stable_counter_resets(kind):
    settings = {}
    nans = np.zeros(240, bool)
    if kind == "variance":
        settings = dict(max_loss_spike_threshold=100.0)
        losses = _injected(240, 105, 3.0)
    elif kind == "nan":
        losses = alternating(240)
        nans[104] = True
    else:
        losses = _injected(240, 105, 50.0)  # 50x spike
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL, **settings)
    step = make_step(loss_fn)
    run(loss_fn, losses[:104], nans[:104], step=step)
    assert int(loss_fn.get_adaptive_weight_metrics()["consecutive_stable_steps"]) == 5
    w, _ = run(loss_fn, losses[104:105], nans[104:105], step=step)
    m = loss_fn.get_adaptive_weight_metrics()
    st = loss_fn.get_stability_metrics()
    assert int(m["consecutive_stable_steps"]) == 0
    assert w[0] == 2.5
    assert int(st["nonfinite_steps"]) == (kind == "nan")
    assert int(st["spike_count"]) == (kind == "spike")
    rest, _ = run(loss_fn, losses[105:], nans[105:], step=step)
    weights = np.concatenate([np.full(104, 2.5), w, rest])
    oracle = Oracle(**settings)
    np.testing.assert_allclose(weights, run_oracle(oracle, losses, nans), rtol=1e-6)
    first = changes_of(weights)[0][0]
    if kind == "nan":
        assert first == 115  # 10 stable steps counted again from 106
    else:
        assert first > 115  # the outlier stays in the 10-loss window until step 114
    assert all_finite(loss_fn)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "newest, expect_change",
    [(20.0, True), (4.0, False), (None, False)],
    ids=["growing", "below_absolute_threshold", "no_norms"],
)
def test_gradient_growth(newest, expect_change):
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    n = 140
    losses = [1.0] * n  # ratio 1: direction 0 unless gradients grow
    norms = [1.0] * n if newest is not None else [None] * n
    if newest is not None:
        norms[119] = newest  # observed after step 120, seen by step 121
    weights, _ = run(loss_fn, losses, norms=norms)
    if expect_change:
        assert changes_of(weights) == [(121, -1)]
    else:
        assert changes_of(weights) == []
    np.testing.assert_allclose(weights, run_oracle(Oracle(), losses, norms=norms), rtol=1e-6)
    m = loss_fn.get_adaptive_weight_metrics()
    hist = loss_fn.gradient_norm_history().numpy()
    if newest is None:
        assert hist.size == 0 and float(m["avg_gradient_norm"]) == 0.0
    else:
        assert hist.size == 11  # newest + the 10 previous
        np.testing.assert_allclose(float(m["avg_gradient_norm"]), np.mean(norms[-10:]), rtol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_growing_flag_follows_the_recorded_norms(mode, tmp_path):
    """A call reads one stored flag; it must be the tracker's pure function of
    the ring after every recorded norm (valid or not), back to False on reset,
    and restored with the ring from a checkpoint."""
    from myxtts_loss import gradient_norm as gn

    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    c = loss_fn.config
    observe = loss_fn.observe_gradient_norm
    if mode == "function":
        observe = tf.function(observe)
    rng = np.random.default_rng(7)
    seen = set()
    for i in range(60):
        norm = float(rng.choice([1.0, 2.0, 30.0, -1.0, np.nan])) * float(rng.uniform(0.5, 1.5))
        observe(tf.constant(norm, tf.float32))
        st = loss_fn._state
        expected = bool(
            gn.gradients_growing(
                st.gradient_norms.read_value(),
                st.gradient_norm_count.read_value(),
                c.adaptive_weight_gradient_growth_factor,
                c.gradient_norm_threshold,
            )
        )
        assert bool(loss_fn._gradients_growing()) == expected, (i, norm)
        seen.add(expected)
    assert seen == {True, False}  # both values were reached
    observe(tf.constant(1000.0))  # over 1.5x the mean of norms drawn at most 45
    assert bool(loss_fn._gradients_growing())
    ckpt = tf.train.Checkpoint(loss=loss_fn).save(str(tmp_path / "ckpt"))
    loss_fn.reset_stability_state()
    assert not bool(loss_fn._gradients_growing())
    restored = XTTSLoss(implementation=DEFAULT_IMPL)
    tf.train.Checkpoint(loss=restored).restore(ckpt).assert_consumed()
    assert bool(restored._gradients_growing())


def test_single_norm_is_not_growing_and_nonfinite_norms_are_ignored():
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    loss_fn.observe_gradient_norm(100.0)
    assert not bool(loss_fn._gradients_growing())
    loss_fn.observe_gradient_norm(float("nan"))
    loss_fn.observe_gradient_norm(float("inf"))
    assert loss_fn.gradient_norm_history().numpy().tolist() == [100.0]
    assert int(loss_fn._state.nonfinite_gradient_norms.numpy()) == 2
    loss_fn.observe_gradient_norm([tf.constant([3.0]), None, tf.constant([4.0])])
    assert loss_fn.gradient_norm_history().numpy().tolist() == [100.0, 5.0]
    for i in range(20):
        loss_fn.observe_gradient_norm(float(i))
    assert loss_fn.gradient_norm_history().numpy().tolist() == [float(i) for i in range(9, 20)]
    assert all_finite(loss_fn)


# ------------------------------------------------------------- bounds, rejection
def test_bounds_and_rejections():
    # Base at the lower bound: the first decision (down at 109) is clipped back
    # onto the bound -> rejected, counter kept; later an "up" is accepted.
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL, mel_loss_weight=1.0)
    weights, _ = run(loss_fn, alternating(300))
    m = loss_fn.get_adaptive_weight_metrics()
    assert int(m["rejected_changes"]) > 0
    assert weights.min() >= 1.0 and weights.max() <= 5.0
    assert weights.max() > 1.0  # not frozen at the bound
    oracle = Oracle(mel_loss_weight=1.0)
    np.testing.assert_allclose(weights, run_oracle(oracle, alternating(300)), rtol=1e-6)
    assert int(m["rejected_changes"]) == oracle.rejected


def test_max_weighted_loss_rejects():
    # 168 would go up to 2.375 * 1.05 = 2.494 with L = 1.0, above the cap of 2.45:
    # rejected (counted), the stable counter is kept, and 169 goes down instead.
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL, adaptive_weight_max_weighted_loss=2.45)
    weights, _ = run(loss_fn, alternating(240))
    oracle = Oracle(adaptive_weight_max_weighted_loss=2.45)
    np.testing.assert_allclose(weights, run_oracle(oracle, alternating(240)), rtol=1e-6)
    assert changes_of(weights)[:2] == [(109, -1), (169, -1)]
    assert int(loss_fn.get_adaptive_weight_metrics()["rejected_changes"]) == oracle.rejected == 1


# ------------------------------------------------------- disable / enable / reset
def test_disable_enable_reset():
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    step = make_step(loss_fn)
    w, _ = run(loss_fn, alternating(120), step=step)
    assert w[-1] != 2.5
    loss_fn.disable_adaptive_weights()
    m = loss_fn.get_adaptive_weight_metrics()
    assert float(m["current_mel_weight"]) == 2.5 and not bool(m["weight_adjustment_enabled"])
    w, totals = run(loss_fn, alternating(300)[120:], step=step)
    assert np.all(w == 2.5)
    np.testing.assert_allclose(totals, 2.5 * np.array(alternating(300)[120:]), rtol=1e-6)
    loss_fn.enable_adaptive_weights()
    assert bool(loss_fn.get_adaptive_weight_metrics()["weight_adjustment_enabled"])
    w, _ = run(loss_fn, alternating(330)[300:], step=step)
    # Gate passes again at once (warmup and cooling long past): change after 10 stable steps.
    assert changes_of(w)[0][0] in (10, 11)
    loss_fn.observe_gradient_norm(3.0)
    loss_fn.reset_stability_state()
    fresh = XTTSLoss(implementation=DEFAULT_IMPL)
    for a, b in zip(loss_fn.state_variables, fresh.state_variables):
        assert a.name == b.name
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    # And the same trajectory as a new loss.
    w, _ = run(loss_fn, alternating(240), step=step)
    assert changes_of(w) == [(109, -1), (168, 1), (227, -1)]


def test_disabled_from_the_start(caplog):
    """A base weight outside the bounds is fine with adaptation off, and
    enable_adaptive_weights() there only warns (the weight stays fixed in that
    mode): no error telling the user to pass use_adaptive_weights=False."""
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL, use_adaptive_weights=False, mel_loss_weight=7.0)
    w, totals = run(loss_fn, alternating(150))
    assert np.all(w == 7.0)
    assert int(loss_fn.step_count.numpy()) == 150
    with caplog.at_level("WARNING", logger="myxtts_loss"):
        loss_fn.enable_adaptive_weights()
    assert "the mel weight stays 7.0" in caplog.text
    w, _ = run(loss_fn, alternating(150))
    assert np.all(w == 7.0)
    with pytest.raises(ValueError, match="mel_loss_weight"):
        XTTSLoss(mel_loss_weight=7.0)  # with adaptation on, the bounds hold


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(mel_loss_weight=6.0), "mel_loss_weight"),
        (dict(mel_loss_weight=0.5), "mel_loss_weight"),
        (dict(adaptive_weight_cooling_period=-1), "adaptive_weight_cooling_period"),
        (dict(adaptive_weight_variance_threshold=0.0), "adaptive_weight_variance_threshold"),
        (dict(adaptive_weight_max_change_percent=1.5), "adaptive_weight_max_change_percent"),
        (
            dict(adaptive_weight_min_weight=3.0, adaptive_weight_max_weight=2.0),
            "adaptive_weight_min_weight",
        ),
        (dict(loss_smoothing_factor=-0.1), "loss_smoothing_factor"),
        (dict(loss_smoothing_factor=1.5), "loss_smoothing_factor"),
        (dict(max_loss_spike_threshold=float("nan")), "max_loss_spike_threshold"),
        (dict(mel_loss_type="l2"), "mel_loss_type"),
        (dict(adaptive_weight_bogus=1), "adaptive_weight_bogus"),
        (dict(implementation="cuda"), "implementation"),
    ],
)
def test_invalid_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        XTTSLoss(**kwargs)


def test_config_object_and_overrides():
    cfg = XTTSLossConfig(mel_loss_weight=3.0, adaptive_weight_cooling_period=30)
    loss_fn = XTTSLoss(config=cfg, adaptive_weight_min_warmup_steps=50, implementation=DEFAULT_IMPL)
    assert loss_fn.config.mel_loss_weight == 3.0
    assert loss_fn.config.adaptive_weight_cooling_period == 30
    assert loss_fn.config.adaptive_weight_min_warmup_steps == 50
    assert float(loss_fn.current_mel_weight.numpy()) == 3.0
    loss_fn = XTTSLoss(config={"mel_loss_weight": 2.0}, mel_loss_weight=4.0)
    assert loss_fn.config.mel_loss_weight == 4.0
    again = XTTSLoss.from_config(loss_fn.get_config())
    assert again.config == loss_fn.config
    # The seed's calls.
    XTTSLoss(
        mel_loss_weight=2.5,
        use_adaptive_weights=True,
        loss_smoothing_factor=0.1,
        max_loss_spike_threshold=2.0,
        gradient_norm_threshold=5.0,
    )
    with pytest.raises(ValueError, match="mel_loss_weight"):
        XTTSLossConfig(mel_loss_weight=9.0)


# ------------------------------------------------------------- non-finite input
def _dict_inputs(rng, dtype="float32", lengths=(6, 4)):
    b, t, m = 2, 6, 5
    yt = rng.standard_normal((b, t, m)).astype(dtype)
    yp = rng.standard_normal((b, t, m)).astype(dtype)
    lens = np.array(lengths, np.int32)
    st = (np.arange(t)[None] == (lens[:, None] - 1)).astype(np.float32)
    sp = rng.standard_normal((b, t, 1)).astype(np.float32)
    return {"mel_target": yt, "mel_lengths": lens, "stop_target": st}, {
        "mel_output": yp,
        "stop_tokens": sp,
    }


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "where",
    ["mel_target", "mel_output", "stop_target", "stop_tokens", "padding", "term"],
)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_anywhere(impl, where, value, rng):
    bad_term = where == "term"
    loss_fn = XTTSLoss(
        implementation=impl,
        extra_losses={"aux": (lambda yt, yp: tf.reduce_mean(yp["aux"]), 0.5)},
    )
    step = tf.function(lambda yt, yp: loss_fn(yt, yp))
    for i in range(120):  # past warmup, with a clean history
        yt, yp = _dict_inputs(rng)
        yp["aux"] = np.ones([2], np.float32)
        step(yt, yp)
    before = {v.name: v.numpy() for v in loss_fn.state_variables}
    yt, yp = _dict_inputs(rng)
    yp["aux"] = np.array([value if bad_term else 1.0, 1.0], np.float32)
    if where == "padding":
        yp["mel_output"][1, 5, 0] = value  # frame 5 >= length 4
        yp["stop_tokens"][1, 5, 0] = value
    elif where in ("mel_target", "mel_output"):
        (yt if where == "mel_target" else yp)[where][0, 2, 3] = value
    elif where in ("stop_target", "stop_tokens"):
        (yt if where == "stop_target" else yp)[where][0, 2] = value
    yp_t = {k: tf.constant(v) for k, v in yp.items()}
    with tf.GradientTape() as tape:
        tape.watch(yp_t["mel_output"])
        tape.watch(yp_t["stop_tokens"])
        total = step(yt, yp_t)
    grads = tape.gradient(total, [yp_t["mel_output"], yp_t["stop_tokens"]])
    assert np.isfinite(float(total))
    if where != "term":
        for g in grads:
            assert np.all(np.isfinite(g.numpy()))
    st = loss_fn.get_stability_metrics()
    expected_bad = where != "padding"
    assert int(st["nonfinite_steps"]) == int(expected_bad)
    after = {v.name: v.numpy() for v in loss_fn.state_variables}
    if expected_bad:
        assert after["current_mel_weight:0"] == before["current_mel_weight:0"]
        assert after["consecutive_stable_steps:0"] == 0
        assert after["weight_changes:0"] == before["weight_changes:0"]
    assert all_finite(loss_fn)
    for v in loss_fn.get_losses().values():
        assert np.isfinite(float(v))


# -------------------------------------------------------------------- soak
def test_soak_2000_steps_nan_and_spikes(rng):
    n = 2000
    base = rng.uniform(0.6, 1.4, n).astype(np.float32)
    nans = rng.random(n) < 0.03
    spikes = (rng.random(n) < 0.01) & ~nans
    losses = np.where(spikes, base * 50.0, base).astype(np.float32)
    norms = rng.lognormal(0.0, 0.3, n).astype(np.float32) * 3.0
    grow = rng.random(n) < 0.05
    norms = np.where(grow, norms * 10.0, norms)
    norms = [float("nan") if rng.random() < 0.01 else float(x) for x in norms]
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    weights, totals = run(loss_fn, losses, nans, norms=norms)
    oracle = Oracle()
    oracle_w = run_oracle(oracle, losses, nans, norms)
    assert np.all(np.isfinite(totals)) and np.all(np.isfinite(weights))
    assert weights.min() >= 1.0 and weights.max() <= 5.0
    ratios = weights[1:] / weights[:-1]
    assert np.all(np.abs(ratios - 1.0) <= 0.05 + 1e-6)
    st = loss_fn.get_stability_metrics()
    m = loss_fn.get_adaptive_weight_metrics()
    assert int(st["nonfinite_steps"]) == int(nans.sum()) == oracle.nonfinite
    assert int(st["spike_count"]) == oracle.spikes > 0
    assert int(m["weight_changes"]) == len(oracle.changes) > 5
    np.testing.assert_allclose(weights, oracle_w, rtol=1e-5)
    assert all_finite(loss_fn)


# ----------------------------------------------------------------- metrics
STABILITY_KEYS = {
    "running_mel_loss",
    "running_total_loss",
    "loss_variance",
    "loss_stability_score",
    "step_count",
    "nonfinite_steps",
    "spike_count",
    "smoothed_total_loss",
    "all_nonfinite_mel_steps",
    "spike_reference_total",
    "mel_window_variance",
}
ADAPTIVE_KEYS = {
    "current_mel_weight",
    "previous_mel_weight",
    "base_mel_weight",
    "steps_since_weight_change",
    "consecutive_stable_steps",
    "weight_adjustment_enabled",
    "avg_gradient_norm",
    "weight_changes",
    "rejected_changes",
}


def test_metrics_snapshots_and_formatting():
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    step = make_step(loss_fn)
    _, totals = run(loss_fn, alternating(109), step=step)
    st, ad = loss_fn.get_stability_metrics(), loss_fn.get_adaptive_weight_metrics()
    assert set(st) == STABILITY_KEYS and set(ad) == ADAPTIVE_KEYS
    for v in list(st.values()) + list(ad.values()):
        assert isinstance(v, tf.Tensor) and not isinstance(v, tf.Variable)
        assert v.shape == ()
        assert isinstance(f"{v:.4f}", str)
    np.testing.assert_allclose(
        float(st["loss_stability_score"]), np.exp(-float(st["loss_variance"])), rtol=1e-6
    )
    # Contract section 5: the population variance of the last 10 raw totals;
    # the rule's gate reads the mel window's.
    np.testing.assert_allclose(float(st["loss_variance"]), np.var(totals[-10:]), rtol=1e-5)
    np.testing.assert_allclose(float(st["mel_window_variance"]), 0.35**2, rtol=1e-5)
    assert int(st["step_count"]) == 109 and int(ad["steps_since_weight_change"]) == 0
    assert f"{ad['current_mel_weight']:.4f}" == "2.3750"
    assert f"{ad['base_mel_weight']:.4f}" == "2.5000"
    snap = {k: v.numpy() for k, v in {**st, **ad}.items()}
    run(loss_fn, alternating(130)[109:], step=step)
    for k, v in {**st, **ad}.items():
        np.testing.assert_array_equal(v.numpy(), snap[k], err_msg=k)  # snapshots do not move
    assert int(loss_fn.get_stability_metrics()["step_count"]) == 130
    # Inside tf.function the getters return tensors too.
    got = tf.function(lambda: loss_fn.get_adaptive_weight_metrics())()
    assert set(got) == ADAPTIVE_KEYS


def test_losses_terms_and_weighted(rng):
    loss_fn = XTTSLoss(
        implementation=DEFAULT_IMPL,
        stop_loss_weight=0.7,
        stop_from_logits=True,
        stop_label_smoothing=0.0,
    )
    loss_fn.add_loss_term(
        "duration", lambda yt, yp: tf.reduce_mean(tf.abs(yp["dur"] - yt["dur"])), 0.3
    )
    yt, yp = _dict_inputs(rng)
    yt["dur"], yp["dur"] = np.ones(2, np.float32), np.full(2, 3.0, np.float32)
    total = float(loss_fn(yt, yp))
    losses, weighted = loss_fn.get_losses(), loss_fn.get_weighted_losses()
    assert list(losses) == ["mel_loss", "stop_loss", "gradient_participation_loss", "duration"]
    assert list(weighted) == [
        "mel_loss",
        "mel_weight",
        "stop_loss",
        "duration",
        "gradient_participation_loss",
        "raw_total_loss",
    ]
    # Reference numbers in NumPy.
    lens = yt["mel_lengths"]
    valid = np.arange(6)[None, :] < lens[:, None]
    d = np.abs(yp["mel_output"].astype(np.float64) - yt["mel_target"])
    per = [d[b][valid[b]].mean() for b in range(2)]
    mel = np.mean(per)
    x = yp["stop_tokens"][..., 0].astype(np.float64)
    z = yt["stop_target"].astype(np.float64)
    bce = 5.0 * z * np.log1p(np.exp(-x)) + (1 - z) * (x + np.log1p(np.exp(-x)))
    stop = np.mean([bce[b][valid[b]].mean() for b in range(2)])  # per-sample, then batch mean
    np.testing.assert_allclose(float(losses["mel_loss"]), mel, rtol=1e-5)
    np.testing.assert_allclose(float(losses["stop_loss"]), stop, rtol=1e-5)
    np.testing.assert_allclose(float(losses["duration"]), 2.0, rtol=1e-6)
    np.testing.assert_allclose(total, 2.5 * mel + 0.7 * stop + 0.3 * 2.0, rtol=1e-5)
    np.testing.assert_allclose(float(weighted["mel_loss"]), 2.5 * mel, rtol=1e-5)
    np.testing.assert_allclose(float(weighted["stop_loss"]), 0.7 * stop, rtol=1e-5)
    np.testing.assert_allclose(float(weighted["duration"]), 0.6, rtol=1e-6)
    np.testing.assert_allclose(float(weighted["raw_total_loss"]), total, rtol=1e-6)
    np.testing.assert_allclose(float(loss_fn.get_raw_total_loss()), total, rtol=1e-6)


def test_plain_tensors_lengths_keyword_and_training_false(rng):
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    yt = rng.standard_normal((2, 6, 5)).astype(np.float32)
    yp = rng.standard_normal((2, 6, 5)).astype(np.float32)
    full = float(loss_fn(yt, yp))
    np.testing.assert_allclose(full, 2.5 * np.abs(yp - yt).mean(), rtol=1e-5)
    masked = float(loss_fn(yt, yp, mel_lengths=tf.constant([6, 2])))
    per = [np.abs(yp - yt)[0].mean(), np.abs(yp - yt)[1, :2].mean()]
    np.testing.assert_allclose(masked, 2.5 * np.mean(per), rtol=1e-5)
    snapshot = [v.numpy() for v in loss_fn.training_state_variables]
    val = float(loss_fn(yt, yp, training=False))
    np.testing.assert_allclose(val, full, rtol=1e-6)
    with loss_fn.validation():  # the trainer-side switch: same call site, no state change
        np.testing.assert_allclose(float(loss_fn(yt, yp)), full, rtol=1e-6)
    for v, s in zip(loss_fn.training_state_variables, snapshot):
        np.testing.assert_array_equal(v.numpy(), s)
    np.testing.assert_allclose(float(loss_fn.get_raw_total_loss()), full, rtol=1e-6)
    with pytest.raises(ValueError, match="sample_weight"):
        loss_fn(yt, yp, sample_weight=np.ones(2))
    with pytest.raises(ValueError, match="mel_output"):
        loss_fn({"mel_target": yt}, {"mel": yp})


# ----------------------------------------------------------- graph behaviour
def test_one_trace_for_300_steps(capfd):
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL, verbose=True)
    traces = []
    body = _step_body(loss_fn)

    def counted(L, nan):
        traces.append(1)
        return body(L, nan)

    fn = tf.function(counted, input_signature=SIG)
    weights, _ = run(
        loss_fn, alternating(300), step=lambda L, nan: fn(tf.constant(L), tf.constant(nan))
    )
    assert len(traces) == 1
    changes = changes_of(weights)
    assert changes[:3] == [(109, -1), (168, 1), (227, -1)]
    graph = fn.get_concrete_function().graph
    ops = graph.get_operations()
    # verbose: printing only inside a cond branch, taken only when the weight changes.
    assert not [op for op in ops if op.type == "PrintV2"]
    assert [op for op in ops if op.type in ("If", "StatelessIf")]
    printed = [
        line for line in capfd.readouterr().err.splitlines() if line.startswith("XTTSLoss: step")
    ]
    assert len(printed) == len(changes)
    assert printed[0].startswith("XTTSLoss: step 109 mel weight 2.5 -> 2.375")


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_compile_parity(impl):
    n = 240
    nans = np.zeros(n, bool)
    nans[[30, 111, 170]] = True
    losses = alternating(n)
    losses[200] = 40.0
    results = []
    for mode in ("function", "xla"):
        loss_fn = XTTSLoss(implementation=impl)
        weights, totals = run(loss_fn, losses, nans, mode=mode)
        results.append((weights, totals, [v.numpy() for v in loss_fn.state_variables]))
    (w0, t0, s0), (w1, t1, s1) = results
    np.testing.assert_allclose(w1, w0, rtol=1e-6)
    np.testing.assert_allclose(t1, t0, rtol=1e-6)
    for a, b in zip(s0, s1):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert len(changes_of(w0)) >= 2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_mixed_precision_reaches_op_uncast(impl, dtype, rng):
    loss_fn = XTTSLoss(implementation=impl)
    yt32, yp32 = _dict_inputs(rng)
    yt = dict(yt32, mel_target=tf.cast(yt32["mel_target"], dtype))
    yp = dict(yp32, mel_output=tf.cast(yp32["mel_output"], dtype))
    fn = tf.function(lambda a, b: loss_fn(a, b))
    with tf.GradientTape() as tape:
        tape.watch(yp["mel_output"])
        total = fn(yt, yp)
    g = tape.gradient(total, yp["mel_output"])
    assert total.dtype == tf.float32 and g.dtype == dtype
    ref = XTTSLoss(implementation="reference")
    yt_up = dict(yt32, mel_target=tf.cast(yt["mel_target"], tf.float32))
    yp_up = dict(yp32, mel_output=tf.cast(yp["mel_output"], tf.float32))
    np.testing.assert_allclose(float(total), float(ref(yt_up, yp_up)), rtol=1e-5)
    if impl == "fused":
        graph = fn.get_concrete_function(yt, yp).graph
        ops = [op for op in graph.get_operations() if op.type == OP_TYPE]
        assert len(ops) == 1
        for t in ops[0].inputs[:2]:
            assert t.dtype == dtype
            assert t.op.type != "Cast", f"{t.op.name} is a Cast feeding the fused op"


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_float32_target_with_half_prediction_keeps_the_target(mode, dtype, rng):
    """A float32 target with a float16/bfloat16 prediction (a model under
    mixed precision, a float32 data pipeline) is measured in float32: the
    target is never rounded to the prediction's dtype, which at log-mel
    magnitudes would erase small errors (bfloat16: most of them) and their
    gradients. Checked against a float64 model of the same inputs."""
    b, t, m = 2, 6, 8
    lens = np.array([6, 4])
    target = rng.normal(-5.0, 2.0, (b, t, m)).astype(np.float32)
    pred = tf.cast(target + 0.01 * rng.standard_normal((b, t, m)), dtype)
    pred64 = tf.cast(pred, tf.float64).numpy()
    loss_fn = XTTSLoss(mel_loss_weight=2.5, use_adaptive_weights=False)

    def value_and_grad(yt, yp):
        with tf.GradientTape() as tape:
            tape.watch(yp["mel_output"])
            total = loss_fn(yt, yp)
        return total, tape.gradient(total, yp["mel_output"])

    call = (
        value_and_grad
        if mode == "eager"
        else tf.function(value_and_grad, jit_compile=mode == "xla")
    )
    total, grad = call(
        {"mel_target": tf.constant(target), "mel_lengths": tf.constant(lens)},
        {"mel_output": pred},
    )
    diff = pred64 - target.astype(np.float64)
    valid = np.arange(t)[None, :, None] < lens[:, None, None]
    want = 2.5 * np.mean([np.abs(diff[i, : lens[i]]).sum() / (lens[i] * m) for i in range(b)])
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    want_grad = np.where(valid, 2.5 * np.sign(diff) / (lens[:, None, None] * m * b), 0.0)
    assert grad.dtype == dtype
    np.testing.assert_allclose(tf.cast(grad, tf.float64).numpy(), want_grad, rtol=1e-2)


def test_float64_mels(rng):
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    yt = rng.standard_normal((2, 5, 4))
    yp = rng.standard_normal((2, 5, 4))
    total = loss_fn(yt, yp, mel_lengths=np.array([5, 3]))
    assert total.dtype == tf.float64
    per = [np.abs(yp - yt)[0].mean(), np.abs(yp - yt)[1, :3].mean()]
    np.testing.assert_allclose(float(total), 2.5 * np.mean(per), rtol=1e-6)


# ---------------------------------------------------------------- checkpoint
def test_checkpoint_resume_gives_same_trajectory(tmp_path):
    losses = alternating(260)
    norms = [1.0 + 0.01 * i for i in range(260)]
    nans = np.zeros(260, bool)
    nans[140] = True
    straight = XTTSLoss(implementation=DEFAULT_IMPL)
    w_straight, t_straight = run(straight, losses, nans, norms=norms)

    first = XTTSLoss(implementation=DEFAULT_IMPL)
    w_a, t_a = run(first, losses[:150], nans[:150], norms=norms[:150])
    path = tf.train.Checkpoint(loss=first).write(os.path.join(tmp_path, "ckpt"))
    resumed = XTTSLoss(implementation=DEFAULT_IMPL)
    tf.train.Checkpoint(loss=resumed).read(path).assert_consumed()
    for a, b in zip(first.state_variables, resumed.state_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    w_b, t_b = run(resumed, losses[150:], nans[150:], norms=norms[150:])
    np.testing.assert_array_equal(np.concatenate([w_a, w_b]), w_straight)
    np.testing.assert_array_equal(np.concatenate([t_a, t_b]), t_straight)


# --------------------------------------------------------- custom training loop
def test_gradient_tape_loop_with_gradient_norms(rng):
    import keras

    b, t, m, d = 4, 8, 5, 6
    x = tf.constant(rng.standard_normal((b, t, d)).astype(np.float32))
    y = {
        "mel_target": tf.constant(rng.standard_normal((b, t, m)).astype(np.float32)),
        "mel_lengths": tf.constant([8, 6, 3, 8], tf.int32),
        "stop_target": tf.constant(
            (np.arange(t)[None] == np.array([7, 5, 2, 7])[:, None]).astype(np.float32)
        ),
    }
    # Layer initialisation from the test's seed (reproducible); the stop head
    # emits probabilities, as MyXTTS's sigmoid head does and as the loss reads it.
    keras.utils.set_random_seed(int(rng.integers(2**31)))
    mel_layer, stop_layer = keras.layers.Dense(m), keras.layers.Dense(1, activation="sigmoid")
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL, adaptive_weight_min_warmup_steps=20)
    opt = keras.optimizers.SGD(0.05)
    # Create the layer/optimizer variables outside the function (otherwise
    # tf.function traces twice on the first call, whatever the loss does).
    mel_layer(x), stop_layer(x)
    opt.build(mel_layer.trainable_variables + stop_layer.trainable_variables)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            y_pred = {"mel_output": mel_layer(x), "stop_tokens": stop_layer(x)}
            loss = loss_fn(y, y_pred)
        variables = mel_layer.trainable_variables + stop_layer.trainable_variables
        grads = tape.gradient(loss, variables)
        norm = tf.linalg.global_norm(grads)
        loss_fn.observe_gradient_norm(norm)
        opt.apply_gradients(zip(grads, variables))
        return loss, norm

    first = None
    for _ in range(60):
        loss, norm = train_step(x, y)
        first = float(loss) if first is None else first
    assert float(loss) < first
    hist = loss_fn.gradient_norm_history().numpy()
    assert hist.size == 11 and np.isclose(hist[-1], float(norm))
    assert int(loss_fn.step_count.numpy()) == 60
    assert train_step.experimental_get_tracing_count() == 1
    assert all_finite(loss_fn)


def test_no_smoothing_reports_the_raw_total(rng):
    """loss_smoothing_factor=0 (legal in the contract, section 4: smoothing
    runs only for alpha > 0): the reported smoothed total is the raw total on
    every call, a spike's included, and the smoothing history stays empty."""
    loss_fn = XTTSLoss(loss_smoothing_factor=0.0)
    step = make_step(loss_fn)
    losses = alternating(30)
    losses[20] = 40.0
    for L in losses:
        raw = float(step(L, False))
        assert float(loss_fn.get_smoothed_total_loss()) == pytest.approx(raw)
    assert float(loss_fn.get_raw_total_loss()) == pytest.approx(raw)
    np.testing.assert_array_equal(loss_fn._state.total_history.numpy(), np.zeros(10))


def test_negative_totals_are_not_all_spikes():
    """A total below 0 (a negative term, as the voice-similarity term can be)
    must not make every step a spike, which would stop the adaptation: the
    spike test asks for more than (theta - 1) x |running total| above it, the
    same as theta x running total when that is positive. The weight then
    moves exactly as without the negative term (the SPEC example's steps)."""
    plain = XTTSLoss()
    shifted = XTTSLoss(extra_losses={"offset": (lambda yt, yp: tf.constant(-10.0), 1.0)})
    losses = alternating(240)
    w_plain, _ = run(plain, losses)
    w_shifted, totals = run(shifted, losses)
    assert np.all(totals < 0)
    assert int(shifted.get_stability_metrics()["spike_count"]) == 0
    np.testing.assert_array_equal(w_shifted, w_plain)
    assert [s for s, _ in changes_of(w_shifted)][:3] == [109, 168, 227]
    oracle = Oracle()
    expected = [oracle.step(L, other=-10.0) for L in losses]
    np.testing.assert_allclose(w_shifted, expected, rtol=1e-6)


@pytest.mark.parametrize("case", ["negative_phase", "zero_phase"])
def test_spike_reference_recovers_from_zero_or_below(case):
    """A reference at or below 0 (a negative term for the first 100 steps, or
    a mel loss of exactly 0 for the first 12) has a spike limit at or below
    0: the positive totals that follow are spikes, and capped at that limit
    they could never lift the reference again (adaptation would stop for
    good). They enter whole there, so the reference follows them up, the
    spikes stop and the weight moves again, as the NumPy model says."""
    offset = tf.Variable(0.0)
    loss_fn = XTTSLoss(extra_losses={"offset": (lambda yt, yp: offset.read_value(), 1.0)})
    step = make_step(loss_fn)
    losses = alternating(400)
    if case == "zero_phase":
        losses = [0.0] * 12 + losses[12:]
    others = [-10.0 if case == "negative_phase" and s < 100 else 0.0 for s in range(400)]
    oracle = Oracle()
    weights, expected = [], []
    for L, other in zip(losses, others):
        offset.assign(other)
        step(float(L), False)
        weights.append(float(loss_fn.current_mel_weight.numpy()))
        expected.append(oracle.step(L, other=other))
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert int(loss_fn.get_stability_metrics()["spike_count"]) == oracle.spikes
    assert float(loss_fn.get_stability_metrics()["spike_reference_total"]) > 0
    assert len([s for s, _ in changes_of(np.array(weights)) if s > 120]) >= 2


def test_fixed_weight_mode_ignores_the_switch():
    """use_adaptive_weights=False fixes the weight (contract section 4):
    enable_adaptive_weights() sets the switch, as in the original, but the
    weight stays at its base through the steps where it would otherwise move
    (109, 168, 227)."""
    loss_fn = XTTSLoss(use_adaptive_weights=False, implementation=DEFAULT_IMPL)
    loss_fn.enable_adaptive_weights()
    weights, totals = run(loss_fn, alternating(240))
    np.testing.assert_array_equal(weights, 2.5)
    assert float(loss_fn.get_adaptive_weight_metrics()["weight_adjustment_enabled"]) == 1.0
    assert int(loss_fn.get_adaptive_weight_metrics()["weight_changes"]) == 0
    np.testing.assert_allclose(totals, 2.5 * np.array(alternating(240)), rtol=1e-6)


def _smoothing_model(totals):
    """Contract section 4's smoothing running total and history, float64."""
    rt, hist = 0.0, np.zeros(10)
    for n, c in enumerate(totals, 1):
        hist[(n - 1) % 10] = c
        d = min(n / 500.0, 0.95)
        rt = d * rt + (1 - d) * c
    return rt, hist


@pytest.mark.parametrize("with_mel", [True, False])
def test_stability_metrics_follow_the_contract(with_mel):
    """running_total_loss, loss_variance and loss_stability_score are the
    contract's (section 5: the smoothing's running total, the population
    variance of its history, 0 while step_count <= 10), with or without a mel
    term (the original's were dead without one: defect 7)."""
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    rng = np.random.default_rng(3)
    values = rng.uniform(0.2, 2.0, 25).astype(np.float32)
    step = tf.function(lambda yt, yp: loss_fn(yt, yp))
    totals = []
    for i, v in enumerate(values):
        yt = {"pitch_target": tf.zeros([2, 4, 1]), "mel_lengths": tf.constant([4, 3])}
        yp = {"pitch_output": tf.fill([2, 4, 1], float(v))}
        if with_mel:
            yt["mel_target"] = tf.zeros([2, 4, 3])
            yp["mel_output"] = tf.fill([2, 4, 3], float(v))
        totals.append(float(step(yt, yp)))
        st = loss_fn.get_stability_metrics()
        rt, hist = _smoothing_model(totals)
        np.testing.assert_allclose(float(st["running_total_loss"]), rt, rtol=1e-5)
        expected_var = np.var(hist) if i + 1 > 10 else 0.0
        np.testing.assert_allclose(float(st["loss_variance"]), expected_var, rtol=1e-4)
        np.testing.assert_allclose(
            float(st["loss_stability_score"]), np.exp(-expected_var), rtol=1e-4
        )
    assert float(st["running_total_loss"]) > 0 and float(st["loss_variance"]) > 0


def test_validation_calls_leave_the_smoothed_total():
    """The smoothed total is training state: a validation call (training=False)
    reports its raw total but leaves the smoothed one, as it leaves the
    smoothing it comes from."""
    loss_fn = XTTSLoss(implementation=DEFAULT_IMPL)
    step = make_step(loss_fn)
    run(loss_fn, alternating(30), step=step)
    smoothed = float(loss_fn.get_smoothed_total_loss())
    yt = {"mel_target": tf.zeros([B, T, M]), "mel_lengths": tf.constant([T, T - 1])}
    raw = loss_fn(yt, {"mel_output": tf.fill([B, T, M], 40.0)}, training=False)
    assert float(loss_fn.get_raw_total_loss()) == float(raw) == pytest.approx(100.0)
    assert float(loss_fn.get_smoothed_total_loss()) == smoothed
    assert float(loss_fn.get_stability_metrics()["smoothed_total_loss"]) == smoothed
