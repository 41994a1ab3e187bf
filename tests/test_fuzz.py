"""Property tests (hypothesis) of the fused op against the float64 oracle.

Every call of ``myxtts_ops.masked_mel_loss`` (eager, and in a ``tf.function``
with unknown shapes) and of ``myxtts_ops.kernels.forward`` / ``backward`` on
generated arguments must either

* return what ``tests/oracle.py`` computes on the *same, already cast* inputs
  (tolerances per dtype from ``conftest.TOLERANCES``), or
* raise the documented error -- ``tf.errors.InvalidArgumentError``,
  ``ValueError`` or ``TypeError`` -- whose message names one of the inputs the
  test made bad,

and nothing else: no other exception, no crash, no bad input silently
accepted. What is generated:

* shapes: B in 0..4, T in 0..9, M in 0..7 (zeros and odd sizes), and now and
  then one sample longer than a CPU work unit (T*M > 16384, several chunks);
* dtypes: float16, bfloat16, float32, float64; y_pred of another dtype, an
  integer dtype, rank 2 / rank 4, mismatched shapes;
* values: normal noise at three scales, plus NaN, +Inf, -Inf, subnormals of
  the dtype, +-1e30, +-1e300, +-0, float16 max, ties (y_pred == y_true), huge
  finite values (a 16th of the dtype's max: Huber terms overflow float32) and
  overflowing pairs (y_true = -0.9 max, y_pred = +0.9 max at one element: a
  finite input pair whose difference overflows), put into valid frames,
  padding or anywhere (values are built in float64, cast to the target dtype
  -- 1e30 is Inf in float16 -- and the oracle runs on the cast arrays);
* byte order: y_true / y_pred (not bfloat16), lengths and state now and then
  big-endian;
* lengths: None, valid int32 / int64 arrays, Python lists, out of range (T+1,
  2^40), negative, wrong shape ([B+1], [], [B, 1]), wrong dtype (float32,
  float64, int16, uint8), float lengths holding NaN or 1e10;
* state: None, fresh, a mid-training state (including a ring head outside
  [0, 10) and a window count that does not match it), a corrupted one (NaN,
  Inf, negative or fractional fields: repaired by the one sanitising rule),
  big-endian float64 (accepted), NumPy float32 / int32 / bool / complex and a
  float32 tf.Tensor (rejected), wrong sizes ([18], [20], [0], [1, 19]);
* loss_type l1 / huber and normalization per_sample / global, plus unknown
  strings and non-strings; huber_delta valid (2**-126, the smallest normal
  float32, and 1e-3 .. 100), 0, negative, NaN, +Inf, True, subnormal (1e-320)
  and normal float64 below 2**-126 (1e-39, 1e-50: 0 once narrowed to float32
  with denormals flushed, so refused for every dtype);
* gradients (GradientTape through the registered fused backward, and
  ``kernels.backward``) with random upstream gradients for loss and per_sample.

Gradient elements whose difference ``d`` is a subnormal (or both inputs are
subnormal) in the accumulation type are not compared: TensorFlow runs CPU
kernels with denormals flushed to zero, so there ``sign(d)`` may be 0.

Examples tried (hypothesis ``max_examples``, all run on every invocation,
deadline off; measured with ``--hypothesis-show-statistics``):
test_op_matches_oracle_or_raises 200, test_op_gradients_match_oracle 80,
test_op_in_tf_function_with_unknown_shapes 80,
test_kernels_forward_matches_oracle_or_raises 200,
test_kernels_backward_matches_oracle 80 -- 640 generated cases per run (a few
more are drawn and discarded by hypothesis itself), in about 6-15 s on a
2-core machine (about 45 s under ASan/UBSan, scripts/sanitize_cpu.sh).
Five consecutive runs (3,200 cases, fresh random seeds) passed.
``MYXTTS_FUZZ_EXAMPLES=N`` sets every test to N examples (e.g. a nightly run
with N=5000).

Gaps this file found and that are fixed (kept as regression tests):
``lengths=[]`` with B = 0 was rejected (``tf.convert_to_tensor([])`` is
float32), ``kernels.forward`` took a 0-d lengths as ``[x]`` when B = 1, and
``kernels.forward`` accepted ``huber_delta=inf``.
"""

import os

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import myxtts_ops
import oracle
from conftest import NP_DTYPES, TOLERANCES, assert_grad_close
from myxtts_ops import state as layout

STATE_SIZE = myxtts_ops.STATE_SIZE
DTYPES = ("float16", "bfloat16", "float32", "float64")
_SCALE = float(os.environ.get("MYXTTS_FUZZ_EXAMPLES", "0")) or None


def _settings(n):
    return settings(
        max_examples=int(_SCALE) if _SCALE else n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=False,
        print_blob=True,
    )


# ---------------------------------------------------------------------------
# Value construction.

SUBNORMAL = {
    "float16": float(np.finfo(np.float16).smallest_subnormal) * 3,
    "bfloat16": float(ml_dtypes.finfo(ml_dtypes.bfloat16).smallest_subnormal) * 5,
    "float32": float(np.finfo(np.float32).smallest_subnormal) * 7,
    "float64": float(np.finfo(np.float64).smallest_subnormal) * 9,
}


def special_value(kind, dtype):
    return {
        "nan": np.nan,
        "inf": np.inf,
        "-inf": -np.inf,
        "subnormal": SUBNORMAL[dtype],
        "-subnormal": -SUBNORMAL[dtype],
        "1e30": 1e30,
        "-1e30": -1e30,
        "1e300": 1e300,
        "-1e300": -1e300,
        "zero": 0.0,
        "-zero": -0.0,
        # Only float16 gets its max: for bfloat16/float32 a difference of two
        # maxima overflows the float32 accumulator where the float64 oracle
        # does not (that overflow is what SPEC 3.2 prescribes).
        "max": 65504.0 if dtype == "float16" else 1e4,
        # Up to 8 of these in one sample cannot overflow a float32 lane sum
        # (SPEC 3.2 accumulates there; the float64 oracle would not overflow).
        "huge": DTYPE_MAX[dtype] / 16,
        "-huge": -DTYPE_MAX[dtype] / 16,
    }[kind]


DTYPE_MAX = {
    "float16": 65504.0,
    "bfloat16": float(ml_dtypes.finfo(ml_dtypes.bfloat16).max),
    "float32": float(np.finfo(np.float32).max),
    "float64": float(np.finfo(np.float64).max),
}

SPECIAL_KINDS = (
    "nan",
    "inf",
    "-inf",
    "subnormal",
    "-subnormal",
    "1e30",
    "-1e30",
    "1e300",
    "-1e300",
    "zero",
    "-zero",
    "max",
    "tie",
    "huge",
    "-huge",
    "overflow",
)


def _big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


def _cast(x64, dtype):
    with np.errstate(over="ignore", invalid="ignore"):
        return x64.astype(NP_DTYPES[dtype])


@st.composite
def mel_shapes(draw):
    if draw(st.integers(0, 9)) == 0:
        # One sample row longer than a CPU work unit (16384 elements).
        return (
            draw(st.integers(1, 2)),
            draw(st.integers(200, 230)),
            draw(st.sampled_from([80, 83])),
        )
    return (draw(st.integers(0, 4)), draw(st.integers(0, 9)), draw(st.integers(0, 7)))


@st.composite
def lengths_specs(draw, batch, frames, allow_bad=True, kernels=False):
    """Returns (lengths object, bad: bool, bad value or None)."""
    kinds = ["none", "int32", "int64", "list", "big_endian"]
    if allow_bad:
        kinds += [
            "too_long",
            "negative",
            "huge",
            "shape_plus1",
            "scalar",
            "rank2",
            "float32",
            "float64",
            "int16",
            "uint8",
            "float_nan",
            "float_1e10",
        ]
    kind = draw(st.sampled_from(kinds))
    valid = np.array([draw(st.integers(0, frames)) for _ in range(batch)], np.int64)
    if batch >= 2 and draw(st.booleans()):
        valid[0], valid[-1] = 0, frames
    if kind == "none":
        return None, False, None
    if kind in ("int32", "int64"):
        return valid.astype(kind), False, None
    if kind == "big_endian":
        return _big_endian(valid.astype(draw(st.sampled_from(["int32", "int64"])))), False, None
    if kind in ("float_nan", "float_1e10"):  # refused by dtype, whatever the values
        lens = valid.astype(np.float64)
        if batch:
            lens[0] = np.nan if kind == "float_nan" else 1e10
        return lens, True, None
    if kind == "list":
        if batch == 0:  # [] converts to float32: see test_empty_list_lengths
            return valid.astype(np.int32), False, None
        return [int(v) for v in valid], False, None
    if kind in ("too_long", "negative", "huge"):
        if batch == 0:
            return valid.astype(np.int32), False, None
        bad = {"too_long": frames + 1, "negative": -draw(st.integers(1, 5)), "huge": 2**40}[kind]
        lens = valid.copy()
        lens[draw(st.integers(0, batch - 1))] = bad
        dt = np.int64 if kind == "huge" else draw(st.sampled_from([np.int32, np.int64]))
        return lens.astype(dt), True, bad
    if kind == "shape_plus1":
        return np.append(valid, 0).astype(np.int32), True, None
    if kind == "scalar":
        if kernels and batch == 1:  # see test_kernels_scalar_lengths
            return np.int32([0]), False, None
        return np.int32(0), True, None
    if kind == "rank2":
        return valid.reshape(batch, 1).astype(np.int32), True, None
    return valid.astype(kind), True, None  # wrong dtype


@st.composite
def state_specs(draw, allow_tensor=True, allow_bad=True):
    """Returns (state object, bad, state as float64 for the oracle)."""
    kinds = ["none", "fresh", "mid", "corrupt", "big_endian"]
    if allow_bad:
        kinds += ["f32", "int32", "bool", "complex", "size18", "size20", "size0", "rank2"]
    if allow_bad and allow_tensor:
        kinds.append("tf_f32")
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None, False, None
    s = np.zeros(STATE_SIZE)
    if kind != "fresh":
        steps = draw(st.integers(0, 3000))
        clean = draw(st.integers(0, steps))
        s[0], s[1], s[2] = steps, clean, steps - clean
        s[3] = draw(st.floats(0, 10))
        s[4] = draw(st.integers(0, 10))
        s[8] = draw(st.sampled_from([0, 3, 9, 12, -1]))  # 12 / -1: outside the ring
        s[9:] = [draw(st.floats(0, 10)) for _ in range(10)]
        s[5], s[6], s[7] = 1.5, 0.25, s[9]
    if kind == "corrupt":
        for _ in range(draw(st.integers(1, 4))):
            s[draw(st.integers(0, STATE_SIZE - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.5, 2.5, 1e300, 2.0**60, 11.0])
            )
    if kind in ("fresh", "mid", "corrupt"):
        return s, False, s
    if kind == "big_endian":
        return _big_endian(s), False, s
    if kind in ("f32", "int32", "bool", "complex"):
        dtype = {"f32": np.float32, "int32": np.int32, "bool": np.bool_, "complex": np.complex128}[
            kind
        ]
        return s.astype(dtype), True, None
    if kind == "tf_f32":
        return tf.constant(s, tf.float32), True, None
    bad = {
        "size18": np.zeros(18),
        "size20": np.zeros(20),
        "size0": np.zeros(0),
        "rank2": s.reshape(1, STATE_SIZE),
    }[kind]
    return bad, True, None


#: The smallest huber_delta every dtype accepts: the smallest normal float32.
SMALLEST_HUBER_DELTA = float(np.finfo(np.float32).tiny)


@st.composite
def config_specs(draw, allow_bad=True, kernels=False):
    bad = set()
    loss_type = draw(st.sampled_from(["l1", "huber"]))
    normalization = draw(st.sampled_from(["per_sample", "global"]))
    delta = draw(st.sampled_from([1.0, 0.5, 2.0, 1e-3, 100.0, 0.123456789, SMALLEST_HUBER_DELTA]))
    if allow_bad:
        which = draw(st.sampled_from(["loss_type", "normalization", "huber_delta"]))
        if which == "loss_type":
            loss_type = draw(st.sampled_from(["L1", "mse", "", "huber ", "l2", None, 3]))
            bad.add("loss_type")
        elif which == "normalization":
            normalization = draw(st.sampled_from(["mean", "", "Global", "per-sample", None]))
            bad.add("normalization")
        else:
            delta = draw(
                st.sampled_from(
                    [
                        0.0,
                        -0.0,
                        -1.0,
                        -1e-30,
                        float("nan"),
                        float("-inf"),
                        float("inf"),
                        True,
                        1e-320,
                        5e-324,
                        # Normal float64 but below the float32 minimum: acts as 0
                        # in float32 kernels with denormals flushed.
                        1e-39,
                        1e-50,
                    ]
                )
            )
            bad.add("huber_delta")
    return dict(loss_type=loss_type, huber_delta=delta, normalization=normalization), bad


#: What a case may make bad: nothing in half the cases (those are compared
#: with the oracle), otherwise one input, so that an error names it. Drawn
#: independently, a bad value somewhere was in about 92 % of the cases.
BAD_INPUTS = (None,) * 4 + ("lengths", "mel", "state", "config")


@st.composite
def mel_cases(draw, allow_bad=True, kernels=False):
    bad_in = draw(st.sampled_from(BAD_INPUTS)) if allow_bad else None
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(mel_shapes())
    b, t, m = shape
    lengths, lengths_bad, lengths_bad_value = draw(
        lengths_specs(b, t, bad_in == "lengths", kernels)
    )
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3]))
    rng = np.random.default_rng(seed)
    yt = rng.standard_normal(shape) * scale
    yp = yt + rng.standard_normal(shape) * scale
    eff = np.full([b], t) if (lengths is None or lengths_bad) else np.asarray(lengths)
    valid = np.broadcast_to((np.arange(t)[None, :] < eff[:, None])[:, :, None], shape)
    specials = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["y_true", "y_pred"]),
                st.sampled_from(SPECIAL_KINDS),
                st.sampled_from(["valid", "pad", "any"]),
                st.integers(0, 2**31),
            ),
            max_size=8,
        )
    )
    for target, kind, region, pick in specials:
        mask = {"valid": valid, "pad": ~valid, "any": np.ones(shape, bool)}[region]
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            continue
        flat = idx[pick % idx.size]
        arr = yt if target == "y_true" else yp
        if kind == "tie":
            yp.reshape(-1)[flat] = yt.reshape(-1)[flat]
        elif kind == "overflow":
            yt.reshape(-1)[flat] = -0.9 * DTYPE_MAX[dtype]
            yp.reshape(-1)[flat] = 0.9 * DTYPE_MAX[dtype]
        else:
            arr.reshape(-1)[flat] = special_value(kind, dtype)
    y_true, y_pred = _cast(yt, dtype), _cast(yp, dtype)
    if dtype != "bfloat16" and draw(st.integers(0, 5)) == 0:
        y_true, y_pred = _big_endian(y_true), _big_endian(y_pred)

    bad = set()
    if lengths_bad:
        bad.add("lengths")
    if bad_in == "mel":
        corruption = draw(st.sampled_from(["rank2", "rank4", "shape", "dtype", "int"]))
        bad.update(["y_true", "y_pred"])
        if corruption == "rank2":
            y_true, y_pred = y_true.reshape(b, t * m), y_pred.reshape(b, t * m)
        elif corruption == "rank4":
            y_true, y_pred = y_true[..., None], y_pred[..., None]
        elif corruption == "shape":
            y_pred = (
                np.concatenate([y_pred, y_pred[:, :1]], axis=1)
                if t
                else np.zeros((b, 1, m), y_pred.dtype)
            )
        elif corruption == "dtype":
            other = draw(st.sampled_from([d for d in DTYPES if d != dtype]))
            with np.errstate(over="ignore", invalid="ignore"):  # huge/NaN values: any result
                y_pred = y_pred.astype(NP_DTYPES[other])
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # the dtype is what is wrong
                y_true, y_pred = y_true.astype(np.int32), y_pred.astype(np.int32)
    state, state_bad, state64 = (
        draw(state_specs(allow_tensor=not kernels, allow_bad=bad_in == "state"))
        if allow_bad
        else (None, False, None)
    )
    if state_bad:
        bad.add("state")
    config, config_bad = draw(config_specs(bad_in == "config", kernels))
    bad |= config_bad
    return dict(
        dtype=dtype,
        y_true=y_true,
        y_pred=y_pred,
        lengths=lengths,
        state=state,
        state64=state64,
        config=config,
        bad=bad,
        lengths_bad_value=lengths_bad_value,
    )


# ---------------------------------------------------------------------------
# Checks.


def _message(err):
    return err.message if isinstance(err, tf.errors.OpError) else str(err)


def check_documented_error(err, case):
    bad = case["bad"]
    assert bad, f"valid arguments raised {type(err).__name__}: {_message(err)}"
    assert isinstance(err, (tf.errors.InvalidArgumentError, ValueError, TypeError)), (
        f"undocumented error type {type(err).__name__} for bad {sorted(bad)}: {_message(err)}"
    )
    msg = _message(err)
    assert any(name in msg for name in bad), (
        f"error message names none of the bad inputs {sorted(bad)}: {msg!r}"
    )
    if bad == {"lengths"} and case["lengths_bad_value"] is not None:
        assert str(case["lengths_bad_value"]) in msg, f"bad length value not in {msg!r}"


def oracle_delta(case, op):
    # huber_delta reaches both the op (a float64 input) and the kernels module
    # as a double; the kernels narrow it to the accumulation type, as the
    # oracle does.
    return case["config"]["huber_delta"]


def oracle_lengths(lengths):
    return None if lengths is None else np.asarray(lengths)


def assert_state_close(got, want, rtol, atol):
    """The op's state against the oracle's, field by field: counters exactly;
    the running mean and last loss within ``rtol`` of their own magnitude (the
    mean is a convex mix of the old mean and this loss, both >= 0); the ring,
    window mean and variance within ``rtol`` of the window's largest value. One
    scale for every field would let a wrong mean through beside a step count
    of 3000 or a finite 1e300 kept in a ring slot."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    for i in (
        layout.STEPS,
        layout.CLEAN_STEPS,
        layout.NONFINITE_STEPS,
        layout.WINDOW_COUNT,
        layout.RING_HEAD,
    ):
        assert got[i] == want[i], f"state[{i}]: {got[i]} != {want[i]}"

    def scale_of(values):
        finite = values[np.isfinite(values)]
        return float(np.max(np.abs(finite))) if finite.size else 0.0

    loss_fields = [layout.RUNNING_MEAN, layout.LAST_LOSS]
    loss_scale = scale_of(want[loss_fields])
    np.testing.assert_allclose(
        got[loss_fields],
        want[loss_fields],
        rtol=rtol,
        atol=atol + 4 * rtol * loss_scale,
        err_msg="running_mean, last_loss",
    )
    window = list(range(layout.RING_START, layout.RING_START + layout.WINDOW_SIZE)) + [
        layout.WINDOW_MEAN
    ]
    window_scale = scale_of(want[window])
    np.testing.assert_allclose(
        got[window],
        want[window],
        rtol=rtol,
        atol=atol + rtol * window_scale,
        err_msg="ring, window_mean",
    )
    # window_variance: of values each within rtol of the oracle's.
    np.testing.assert_allclose(
        got[layout.WINDOW_VARIANCE],
        want[layout.WINDOW_VARIANCE],
        rtol=rtol,
        atol=atol + 4 * rtol * min(window_scale * window_scale, 1e300),
        err_msg="window_variance",
    )


def compare_forward(got, case, op):
    dtype = case["dtype"]
    t = TOLERANCES[dtype]
    want = oracle.forward(
        case["y_true"],
        case["y_pred"],
        oracle_lengths(case["lengths"]),
        case["state64"],
        case["config"]["loss_type"],
        oracle_delta(case, op),
        case["config"]["normalization"],
    )
    out_dtype = np.float64 if dtype == "float64" else np.float32
    with np.errstate(over="ignore"):
        want_loss = np.asarray(want["loss"]).astype(out_dtype)
        want_ps = want["per_sample"].astype(out_dtype)
    assert np.asarray(got["loss"]).dtype == out_dtype
    assert np.asarray(got["per_sample"]).dtype == out_dtype
    np.testing.assert_allclose(
        np.asarray(got["loss"], np.float64),
        want_loss.astype(np.float64),
        rtol=t["rtol"],
        atol=t["atol"],
        err_msg="loss",
    )
    np.testing.assert_allclose(
        np.asarray(got["per_sample"], np.float64),
        want_ps.astype(np.float64),
        rtol=t["rtol"],
        atol=t["atol"],
        err_msg="per_sample",
    )
    assert int(got["nonfinite_count"]) == want["nonfinite_count"], "nonfinite_count"
    assert_state_close(got["state"], want["state"], t["rtol"], t["atol"])
    return want


def flushable(y_true, y_pred, dtype):
    """Elements whose d (or inputs) are subnormal in the accumulation type."""
    acc = np.float64 if dtype == "float64" else np.float32
    tiny = np.finfo(acc).tiny
    t = np.asarray(y_true).astype(np.float64)
    p = np.asarray(y_pred).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.asarray(oracle._diff(y_true, y_pred))
        sub = lambda x: (x != 0) & (np.abs(x) < tiny)  # noqa: E731
        return sub(d) | sub(t) | sub(p)


# ---------------------------------------------------------------------------
# The TF op, eagerly.


def _call_op(case):
    return myxtts_ops.masked_mel_loss(
        case["y_true"], case["y_pred"], case["lengths"], case["state"], **case["config"]
    )


@_settings(200)
@given(case=mel_cases())
def test_op_matches_oracle_or_raises(case):
    try:
        out = _call_op(case)
    except (tf.errors.OpError, ValueError, TypeError) as err:
        check_documented_error(err, case)
        return
    assert not case["bad"], f"bad {sorted(case['bad'])} silently accepted"
    got = dict(
        loss=out.loss.numpy(),
        per_sample=out.per_sample.numpy(),
        nonfinite_count=out.nonfinite_count.numpy(),
        state=out.state.numpy(),
    )
    assert out.nonfinite_count.dtype == tf.int64 and out.state.dtype == tf.float64
    compare_forward(got, case, op=True)


@_settings(80)
@given(case=mel_cases(allow_bad=False), seed=st.integers(0, 2**32 - 1))
def test_op_gradients_match_oracle(case, seed):
    dtype = case["dtype"]
    b = case["y_true"].shape[0]
    rng = np.random.default_rng(seed)
    out_dtype = np.float64 if dtype == "float64" else np.float32
    g_loss = out_dtype(rng.uniform(-2, 2))
    g_ps = rng.uniform(-2, 2, size=b).astype(out_dtype)
    y_true = tf.constant(case["y_true"])
    y_pred = tf.constant(case["y_pred"])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([y_true, y_pred])
        out = myxtts_ops.masked_mel_loss(
            y_true, y_pred, case["lengths"], case["state"], **case["config"]
        )
        objective = g_loss * out.loss + tf.reduce_sum(g_ps * out.per_sample)
    grad_true, grad_pred = tape.gradient(objective, [y_true, y_pred])
    oracle_args = (
        case["y_true"],
        case["y_pred"],
        oracle_lengths(case["lengths"]),
        case["config"]["loss_type"],
        oracle_delta(case, True),
        case["config"]["normalization"],
    )
    oracle_kw = dict(grad_loss=float(g_loss), grad_per_sample=g_ps.astype(np.float64))
    want_true, want_pred = oracle.backward(*oracle_args, **oracle_kw)
    terms = oracle.coefficient_terms(*oracle_args, **oracle_kw)
    assert grad_true.dtype == y_true.dtype and grad_pred.dtype == y_pred.dtype
    keep = ~flushable(case["y_true"], case["y_pred"], dtype)
    for got, want, what in (
        (grad_pred, want_pred, "grad y_pred"),
        (grad_true, want_true, "grad y_true"),
    ):
        got = got.numpy().astype(np.float64)
        assert np.all(np.isfinite(got)), what
        assert_grad_close(np.where(keep, got, 0.0), np.where(keep, want, 0.0), dtype, what, terms)
        assert np.all(np.abs(got[~keep]) <= np.abs(want[~keep]) * (1 + 1e-2) + 1e-30), what


# ---------------------------------------------------------------------------
# The TF op in a graph with unknown shapes: the checks happen at run time.

_GRAPH_FNS = {}


def _graph_fn(dtype, lengths_dtype, loss_type, normalization):
    key = (dtype, lengths_dtype, loss_type, normalization)
    if key not in _GRAPH_FNS:
        tf_dtype = tf.as_dtype(NP_DTYPES[dtype]) if dtype != "bfloat16" else tf.bfloat16
        signature = [
            tf.TensorSpec(None, tf_dtype),
            tf.TensorSpec(None, tf_dtype),
            tf.TensorSpec([None], tf.float64),
        ]
        if lengths_dtype is not None:
            signature.insert(2, tf.TensorSpec(None, lengths_dtype))

            @tf.function(input_signature=signature)
            def fn(y_true, y_pred, lengths, state):
                o = myxtts_ops.masked_mel_loss(
                    y_true, y_pred, lengths, state, loss_type=loss_type, normalization=normalization
                )
                return o.loss, o.per_sample, o.nonfinite_count, o.state
        else:

            @tf.function(input_signature=signature)
            def fn(y_true, y_pred, state):
                o = myxtts_ops.masked_mel_loss(
                    y_true, y_pred, None, state, loss_type=loss_type, normalization=normalization
                )
                return o.loss, o.per_sample, o.nonfinite_count, o.state

        _GRAPH_FNS[key] = fn
    return _GRAPH_FNS[key]


@st.composite
def graph_cases(draw):
    case = draw(mel_cases(allow_bad=False))
    b, t, m = case["y_true"].shape
    case["config"]["huber_delta"] = 1.0
    case["bad"] = set()
    lengths, lengths_bad, bad_value = draw(lengths_specs(b, t, allow_bad=True))
    if lengths is not None and np.asarray(lengths).dtype.name not in ("int32", "int64"):
        lengths, lengths_bad, bad_value = None, False, None  # a dtype error is a trace error
    case["lengths"], case["lengths_bad_value"] = lengths, bad_value
    if lengths_bad:
        case["bad"].add("lengths")
    corruption = draw(st.sampled_from(["none"] * 4 + ["rank2", "rank4", "shape", "state"]))
    if corruption == "rank2":
        case["y_true"] = case["y_true"].reshape(b, t * m)
        case["y_pred"] = case["y_pred"].reshape(b, t * m)
        case["bad"].update(["y_true", "y_pred"])
    elif corruption == "rank4":
        case["y_true"], case["y_pred"] = case["y_true"][None], case["y_pred"][None]
        case["bad"].update(["y_true", "y_pred"])
    elif corruption == "shape":
        case["y_pred"] = np.zeros((b, t, m + 1), case["y_pred"].dtype)
        case["bad"].update(["y_true", "y_pred"])
    # A fresh, mid-training or corrupted state (sanitised by the op), as eagerly.
    state, _, state64 = draw(state_specs(allow_tensor=False, allow_bad=False))
    if state is None:
        state = state64 = np.zeros(STATE_SIZE)
    case["state64"] = state64
    case["state"] = state
    if corruption == "state":
        case["state"] = np.zeros(draw(st.sampled_from([0, 18, 20])))
        case["bad"].add("state")
    return case


@_settings(80)
@given(case=graph_cases())
def test_op_in_tf_function_with_unknown_shapes(case):
    lengths = case["lengths"]
    lengths_dtype = None if lengths is None else tf.as_dtype(np.asarray(lengths).dtype.name)
    fn = _graph_fn(
        case["dtype"], lengths_dtype, case["config"]["loss_type"], case["config"]["normalization"]
    )
    args = (
        [case["y_true"], case["y_pred"]] + ([] if lengths is None else [lengths]) + [case["state"]]
    )
    try:
        loss, per_sample, nonfinite, state = fn(*args)
    except (tf.errors.OpError, ValueError, TypeError) as err:
        check_documented_error(err, case)
        return
    assert not case["bad"], f"bad {sorted(case['bad'])} silently accepted"
    got = dict(
        loss=loss.numpy(),
        per_sample=per_sample.numpy(),
        nonfinite_count=nonfinite.numpy(),
        state=state.numpy(),
    )
    compare_forward(got, case, op=True)


# ---------------------------------------------------------------------------
# The pybind11 module on NumPy arrays.


@_settings(200)
@given(case=mel_cases(kernels=True), threads=st.integers(0, 3))
def test_kernels_forward_matches_oracle_or_raises(case, threads):
    from myxtts_ops import kernels

    try:
        got = kernels.forward(
            case["y_true"],
            case["y_pred"],
            case["lengths"],
            case["state"],
            num_threads=threads,
            **case["config"],
        )
    except (ValueError, TypeError) as err:
        check_documented_error(err, case)
        return
    assert not case["bad"], f"bad {sorted(case['bad'])} silently accepted"
    want = compare_forward(got, case, op=False)
    np.testing.assert_allclose(
        got["sample_weights"], want["sample_weights"], rtol=1e-12, atol=0, err_msg="sample_weights"
    )


@_settings(80)
@given(case=mel_cases(allow_bad=False), seed=st.integers(0, 2**32 - 1), threads=st.integers(0, 3))
def test_kernels_backward_matches_oracle(case, seed, threads):
    from myxtts_ops import kernels

    dtype = case["dtype"]
    b = case["y_true"].shape[0]
    rng = np.random.default_rng(seed)
    out_dtype = np.float64 if dtype == "float64" else np.float32
    g_loss = np.asarray(rng.uniform(-2, 2), out_dtype)
    g_ps = rng.uniform(-2, 2, size=b).astype(out_dtype)
    cfg = case["config"]
    fwd = kernels.forward(
        case["y_true"], case["y_pred"], case["lengths"], None, num_threads=threads, **cfg
    )
    grad_true, grad_pred = kernels.backward(
        case["y_true"],
        case["y_pred"],
        case["lengths"],
        fwd["sample_weights"],
        g_loss,
        g_ps,
        loss_type=cfg["loss_type"],
        huber_delta=cfg["huber_delta"],
        num_threads=threads,
    )
    oracle_args = (
        case["y_true"],
        case["y_pred"],
        oracle_lengths(case["lengths"]),
        cfg["loss_type"],
        cfg["huber_delta"],
        cfg["normalization"],
    )
    oracle_kw = dict(grad_loss=float(g_loss), grad_per_sample=g_ps.astype(np.float64))
    want_true, want_pred = oracle.backward(*oracle_args, **oracle_kw)
    terms = oracle.coefficient_terms(*oracle_args, **oracle_kw)
    assert grad_pred.dtype.name == case["y_true"].dtype.name and grad_pred.dtype.isnative
    keep = ~flushable(case["y_true"], case["y_pred"], dtype)
    for got, want, what in (
        (grad_pred, want_pred, "grad y_pred"),
        (grad_true, want_true, "grad y_true"),
    ):
        got = np.asarray(got).astype(np.float64)
        assert_grad_close(np.where(keep, got, 0.0), np.where(keep, want, 0.0), dtype, what, terms)


def test_empty_list_lengths():
    """B = 0 with lengths=[] (the list form of an empty int vector) is valid."""
    y = np.zeros((0, 3, 4), np.float32)
    out = myxtts_ops.masked_mel_loss(y, y, lengths=[])
    assert float(out.loss) == 0.0 and out.per_sample.shape == (0,)


def test_kernels_scalar_lengths():
    from myxtts_ops import kernels

    y = np.ones((1, 4, 3), np.float32)
    with pytest.raises(ValueError, match="lengths"):
        kernels.forward(y, y, np.int32(2))
