"""The pure decision functions of myxtts_loss.rule against NumPy models, with no variables.

* ``adaptive_weight_step`` against a NumPy model of SPEC 4.1, one step at a time
  from random states and observations (non-finite values, spikes, gates, bounds);
* ``smoothing_step`` against a NumPy model of the MyXTTS contract's section 4
  smoothing (history of 10 raw totals, EMA with d = min(n/500, 0.95), spike damping);
* a 400-step smoothing trajectory matches the original's documented rules.

Each runs the TF-ops form and the C++ op form (``fused=True``);
tests/test_rule_op.py compares the two with each other.
"""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from myxtts_loss import rule
from myxtts_loss.config import XTTSLossConfig

CFG = XTTSLossConfig()


def np_adaptive(state, obs, c, enabled):
    """SPEC 4.1, written from the spec in plain Python (float32 where the graph is float32)."""
    f = np.float32
    s = state["step_count"] + 1
    w = f(state["current_mel_weight"])
    mel, other = f(obs["mel"]), f(obs["other"])
    total_pre = f(w * mel + other)
    finite = obs["finite"] and math.isfinite(total_pre)
    clean = finite and obs["has_valid"]
    rt, rt_init = f(state["running_total_loss"]), state["running_total_initialized"]
    check = s > 10 and rt_init
    theta = c.max_loss_spike_threshold
    # Every constant rounded to float32 first, as the graph does (and NumPy 1.x
    # would not, promoting float32 x Python float to float64).
    limit = f(theta if rt >= 0 else 2.0 - theta) * rt  # above rt by (theta - 1) |rt|
    spike = clean and check and total_pre > limit
    passed = (
        clean
        and not spike
        and enabled
        and s >= c.adaptive_weight_min_warmup_steps
        and s - state["last_weight_change_step"] >= c.adaptive_weight_cooling_period
        and obs["window_variance"] < c.adaptive_weight_variance_threshold
    )
    consec = state["consecutive_stable_steps"] + 1 if passed else 0
    accepted = rejected = False
    new_w = w
    if passed and consec >= c.adaptive_weight_min_stable_steps:
        m = mel if math.isfinite(mel) else f(0)
        ratio = min(max(m / max(abs(f(obs["running_mean"])), 1e-8), 0.1), 10.0)
        g = obs["growing"]
        d = (
            -1
            if (ratio < c.adaptive_weight_loss_low_ratio or g)
            else (1 if ratio > c.adaptive_weight_loss_high_ratio else 0)
        )
        if d:
            cand = f(
                min(
                    max(
                        w * f(1 + f(c.adaptive_weight_max_change_percent) * d),
                        c.adaptive_weight_min_weight,
                    ),
                    c.adaptive_weight_max_weight,
                )
            )
            ok = (
                cand != w
                and c.adaptive_weight_min_weight <= cand <= c.adaptive_weight_max_weight
                and math.isfinite(cand * m)
                and cand * m <= c.adaptive_weight_max_weighted_loss
            )
            accepted, rejected = ok, not ok
            if ok:
                new_w = cand
    total = f(new_w * mel + other)
    if clean:
        if rt_init:
            x = min(total, limit) if check and rt > 0 else total
            a = c.spike_reference_rate
            new_rt = f(1 - a) * rt + f(a) * f(x)
        else:
            new_rt = total
    else:
        new_rt = rt
    return {
        "step_count": s,
        "current_mel_weight": new_w,
        "previous_mel_weight": w if accepted else state["previous_mel_weight"],
        "last_weight_change_step": s if accepted else state["last_weight_change_step"],
        "consecutive_stable_steps": 0 if accepted else consec,
        "running_total_loss": new_rt,
        "running_total_initialized": rt_init or clean,
        "nonfinite_steps": state["nonfinite_steps"] + (0 if finite else 1),
        "spike_count": state["spike_count"] + int(spike),
        "weight_changes": state["weight_changes"] + int(accepted),
        "rejected_changes": state["rejected_changes"] + int(rejected),
    }, new_w


def _random_case(rng):
    s = int(rng.integers(0, 300))
    state = {
        "step_count": s,
        "current_mel_weight": float(np.float32(rng.choice([1.0, 5.0, rng.uniform(1, 5)]))),
        "previous_mel_weight": float(np.float32(rng.uniform(1, 5))),
        "last_weight_change_step": int(rng.integers(0, s + 1)),
        "consecutive_stable_steps": int(rng.integers(0, 15)),
        "running_total_loss": float(np.float32(rng.uniform(-3, 3))),
        "running_total_initialized": bool(rng.random() < 0.8),
        "nonfinite_steps": int(rng.integers(0, 5)),
        "spike_count": int(rng.integers(0, 5)),
        "weight_changes": int(rng.integers(0, 5)),
        "rejected_changes": int(rng.integers(0, 5)),
    }
    mel = rng.choice([rng.uniform(0, 2), rng.uniform(0, 20), np.nan, np.inf, 3e3])
    obs = {
        "mel": float(np.float32(mel)),
        "other": float(np.float32(rng.choice([0.0, rng.uniform(0, 1)]))),
        "finite": bool(rng.random() < 0.9),
        "has_valid": bool(rng.random() < 0.95),
        "running_mean": float(np.float32(rng.choice([0.0, rng.uniform(0.1, 2)]))),
        "window_variance": float(np.float32(rng.uniform(0, 0.7))),
        "growing": bool(rng.random() < 0.2),
    }
    return state, obs, bool(rng.random() < 0.9)


def _tf_state(state):
    return {k: tf.constant(v, dtype=rule.RULE_STATE[k][0]) for k, v in state.items()}


def _tf_obs(obs):
    return {
        k: tf.constant(v, tf.bool if isinstance(v, bool) else tf.float32) for k, v in obs.items()
    }


@pytest.mark.parametrize(
    "settings",
    [
        {},
        dict(
            adaptive_weight_min_warmup_steps=5,
            adaptive_weight_cooling_period=3,
            adaptive_weight_min_stable_steps=2,
            adaptive_weight_max_weighted_loss=10.0,
        ),
    ],
)
@pytest.mark.parametrize("fused", [False, True], ids=["tf_ops", "op"])
def test_adaptive_step_matches_numpy_model(settings, fused, rng):
    c = CFG.replace(**settings)
    step = tf.function(lambda st, ob, en: rule.adaptive_weight_step(st, ob, c, en, fused=fused))
    decided = 0
    # At least 400 random cases, and as many more as it takes (up to 4000) for
    # ten of them to reach the decision, whatever the seed.
    for case in range(4000):
        if case >= 400 and decided >= 10:
            break
        state, obs, enabled = _random_case(rng)
        if settings:
            state["step_count"] = int(rng.integers(0, 20))
            state["last_weight_change_step"] = int(rng.integers(0, state["step_count"] + 1))
        expected, w = np_adaptive(state, obs, c, enabled)
        got, got_w, events = step(_tf_state(state), _tf_obs(obs), tf.constant(enabled))
        assert float(got_w) == pytest.approx(float(w), rel=1e-6)
        for k, v in expected.items():
            g = got[k].numpy()
            if isinstance(v, (bool, np.bool_)):
                assert bool(g) == v, (k, state, obs)
            else:
                np.testing.assert_allclose(g, v, rtol=1e-6, err_msg=f"{k} {state} {obs}")
        decided += int(bool(events["accepted"]) or bool(events["rejected"]))
    assert decided >= 10  # the random cases do reach the decision


@pytest.mark.parametrize("fused", [False, True], ids=["tf_ops", "op"])
def test_adaptive_step_is_pure(fused):
    """No variables are read or written: the same inputs give the same outputs, and the
    function traces to a graph without variable ops."""
    state, obs, _ = _random_case(np.random.default_rng(1))
    fn = tf.function(
        lambda st, ob: rule.adaptive_weight_step(st, ob, CFG, tf.constant(True), fused=fused)
    )
    graph = fn.get_concrete_function(_tf_state(state), _tf_obs(obs)).graph
    kinds = {op.type for op in graph.get_operations()}
    assert not kinds & {"ReadVariableOp", "AssignVariableOp", "VarHandleOp", "AssignAddVariableOp"}
    a = fn(_tf_state(state), _tf_obs(obs))
    b = fn(_tf_state(state), _tf_obs(obs))
    tf.nest.map_structure(lambda x, y: np.testing.assert_array_equal(x.numpy(), y.numpy()), a, b)


def np_smoothing(history, rt, c_raw, n, alpha=0.1, theta=2.0):
    """Contract section 4, "Smoothing", with n = this call's step number."""
    if alpha == 0:  # smoothing does not run: the raw total, the state untouched
        return history, rt, c_raw
    c = c_raw if math.isfinite(c_raw) else 0.0
    history = [h if math.isfinite(h) else 0.0 for h in history]
    rt = rt if math.isfinite(rt) else 0.0
    history[(n - 1) % 10] = c
    d = min(n / 500.0, 0.95)
    rt = d * rt + (1 - d) * c
    if not math.isfinite(rt):
        rt = c
    avg = float(np.mean(history))
    rho = c / (avg + 1e-8)
    if not math.isfinite(rho):
        rho = 1.0
    if n > 10:
        out = c * min(theta / rho, 1.0) if rho > theta else (1 - alpha) * c + alpha * rt
    else:
        out = c
    return history, rt, out if math.isfinite(out) else c


@pytest.mark.parametrize("fused", [False, True], ids=["tf_ops", "op"])
@pytest.mark.parametrize("alpha", [0.1, 0.0])
def test_smoothing_trajectory_matches_numpy_model(alpha, fused, rng):
    """alpha = 0 is the contract's "no smoothing": the raw total on every
    call, spikes included, and neither the history nor the EMA written."""
    cfg = dataclasses.replace(CFG, loss_smoothing_factor=alpha)
    hist_np, rt_np = [0.0] * 10, 0.0
    state = {"total_history": tf.zeros([10]), "smoothing_running_total": tf.constant(0.0)}
    step = tf.function(lambda st, c, n: rule.smoothing_step(st, c, n, cfg, fused=fused))
    damped = 0
    for n in range(1, 401):
        c = float(rng.uniform(0.5, 1.5))
        if n % 37 == 0:
            c *= 40.0  # spike
        if n % 53 == 0:
            c = float("nan")
        hist_np, rt_np, out_np = np_smoothing(hist_np, rt_np, c, n, alpha=alpha)
        state, out = step(state, tf.constant(c, tf.float32), tf.constant(n, tf.int64))
        np.testing.assert_allclose(
            float(out), out_np, rtol=2e-5, err_msg=f"step {n}", equal_nan=True
        )
        np.testing.assert_allclose(state["total_history"].numpy(), hist_np, rtol=1e-6)
        damped += int(n > 10 and math.isfinite(c) and out_np < 0.99 * c)
    assert damped > 5 if alpha else damped == 0
