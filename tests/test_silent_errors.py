"""Regression tests of issue 14, op side: nothing silently wrong, every input
checked where it enters. Each test failed on the code before the fix.

* overflow: a valid element whose loss is not finite in the accumulation type
  (an overflowing difference, an overflowing Huber term) is excluded and
  counted like a NaN input, with a zero gradient; a step whose loss is not
  finite (finite element losses whose sum overflows) never enters the running
  statistics -- in the fused op, the reference and the kernels module alike;
* non-native byte order arrays in ``myxtts_ops.kernels``;
* one rule for a corrupted incoming state, the same in every implementation;
* state dtypes and ``huber_delta`` types refused everywhere;
* ``num_threads`` bounded, a thread that cannot start raises;
* ``huber_delta`` subnormal refused in Python naming the value, second-order
  and forward-mode gradients raise a clear error, workspace sizes checked.
"""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

import myxtts_ops
import oracle
from child_env import TESTS_DIR, child_env
from myxtts_ops import kernels, reference
from myxtts_ops import state as st
from myxtts_ops.ops import HigherOrderGradientError

F32_MAX = float(np.finfo(np.float32).max)


def _op(y_true, y_pred, lengths=None, state=None, **kw):
    out = myxtts_ops.masked_mel_loss(y_true, y_pred, lengths, state, **kw)
    return {k: np.asarray(getattr(out, k)) for k in out._fields}


def _ref(y_true, y_pred, lengths=None, state=None, **kw):
    out = reference.masked_mel_loss(y_true, y_pred, lengths, state, **kw)
    return {k: np.asarray(getattr(out, k)) for k in out._fields}


def _kernels(y_true, y_pred, lengths=None, state=None, **kw):
    return kernels.forward(y_true, y_pred, lengths, state, **kw)


IMPLS = {"fused": _op, "reference": _ref, "kernels": _kernels}


# ---------------------------------------------------------------------------
# 1. Overflow.
def _overflow_case(dtype):
    """Two samples; sample 0 has 3 overflowing elements among 6 ordinary ones."""
    big = {"float32": 3e38, "float64": 1.7e308}[dtype]
    y_true = np.zeros((2, 3, 3), dtype)
    y_pred = np.ones((2, 3, 3), dtype)
    y_true[0, 0, :] = -big
    y_pred[0, 0, :] = big
    return y_true, y_pred


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss_type", ["l1", "huber"])
def test_overflowing_difference_is_excluded_and_counted(impl, dtype, loss_type):
    y_true, y_pred = _overflow_case(dtype)
    state = np.zeros(st.STATE_SIZE)
    out = IMPLS[impl](y_true, y_pred, None, state, loss_type=loss_type)
    elem = 1.0 if loss_type == "l1" else 0.5
    assert int(out["nonfinite_count"]) == 3
    np.testing.assert_allclose(out["per_sample"], [elem, elem])
    assert float(out["loss"]) == pytest.approx(elem)
    s = out["state"]
    # A non-finite element: a non-finite step, the statistics untouched.
    assert s[st.STEPS] == 1 and s[st.NONFINITE_STEPS] == 1 and s[st.CLEAN_STEPS] == 0
    assert np.all(np.isfinite(s)) and s[st.RUNNING_MEAN] == 0


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_overflowing_huber_term_is_excluded(impl):
    # d = 1e37 is finite, delta * (|d| - delta / 2) = 1e39 is not (float32).
    y_true = np.zeros((1, 1, 4), np.float32)
    y_pred = np.array([[[1e37, 1.0, 1.0, 1.0]]], np.float32)
    out = IMPLS[impl](y_true, y_pred, loss_type="huber", huber_delta=100.0)
    assert int(out["nonfinite_count"]) == 1
    assert float(out["loss"]) == pytest.approx(0.5)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_loss_overflowing_its_sum_never_enters_the_statistics(impl):
    # Every element loss is finite (3e38), their float32 sum is not.
    y_true = np.zeros((1, 64, 1), np.float32)
    y_pred = np.full((1, 64, 1), 3e38, np.float32)
    clean = IMPLS[impl](np.zeros((1, 2, 1), np.float32), np.ones((1, 2, 1), np.float32))
    out = IMPLS[impl](y_true, y_pred, None, clean["state"])
    assert int(out["nonfinite_count"]) == 0
    assert not np.isfinite(float(out["loss"]))
    s, before = out["state"], clean["state"]
    assert s[st.STEPS] == 2 and s[st.NONFINITE_STEPS] == 1 and s[st.CLEAN_STEPS] == 1
    np.testing.assert_array_equal(s[st.RUNNING_MEAN :], before[st.RUNNING_MEAN :])
    assert np.all(np.isfinite(s))


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_overflow_then_clean_steps_match_a_run_without_it(impl):
    fn = IMPLS[impl]
    rng = np.random.default_rng(3)
    batches = [
        (
            rng.standard_normal((2, 4, 3)).astype(np.float32),
            rng.standard_normal((2, 4, 3)).astype(np.float32),
        )
        for _ in range(4)
    ]
    y_true, y_pred = _overflow_case("float32")
    with_overflow, without = np.zeros(st.STATE_SIZE), np.zeros(st.STATE_SIZE)
    for i, (a, b) in enumerate(batches):
        if i == 2:
            with_overflow = fn(y_true, y_pred, None, with_overflow)["state"]
            with_overflow = fn(
                np.zeros((1, 64, 1), np.float32),
                np.full((1, 64, 1), 3e38, np.float32),
                None,
                with_overflow,
            )["state"]
        with_overflow = fn(a, b, None, with_overflow)["state"]
        without = fn(a, b, None, without)["state"]
    assert with_overflow[st.STEPS] == without[st.STEPS] + 2
    assert with_overflow[st.NONFINITE_STEPS] == 2
    counters = [st.STEPS, st.NONFINITE_STEPS]
    np.testing.assert_array_equal(np.delete(with_overflow, counters), np.delete(without, counters))
    assert np.isfinite(with_overflow[st.RUNNING_MEAN])


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("loss_type", ["l1", "huber"])
def test_overflowing_elements_get_zero_gradient(impl, loss_type):
    y_true, y_pred = _overflow_case("float32")
    fn = myxtts_ops.masked_mel_loss if impl == "fused" else reference.masked_mel_loss
    yt, yp = tf.constant(y_true), tf.constant(y_pred)
    with tf.GradientTape() as tape:
        tape.watch([yt, yp])
        out = fn(yt, yp, loss_type=loss_type)
    g_true, g_pred = tape.gradient(out.loss, [yt, yp])
    want_true, want_pred = oracle.backward(y_true, y_pred, loss_type=loss_type)
    assert np.all(g_pred.numpy()[0, 0] == 0) and np.all(g_true.numpy()[0, 0] == 0)
    np.testing.assert_allclose(g_pred.numpy(), want_pred, rtol=1e-6)
    np.testing.assert_allclose(g_true.numpy(), want_true, rtol=1e-6)


def test_overflowing_elements_get_zero_gradient_kernels():
    y_true, y_pred = _overflow_case("float32")
    fwd = kernels.forward(y_true, y_pred)
    g_true, g_pred = kernels.backward(
        y_true, y_pred, None, fwd["sample_weights"], np.float32(1.0), np.zeros(2, np.float32)
    )
    assert np.all(g_pred[0, 0] == 0) and np.all(g_true[0, 0] == 0)
    np.testing.assert_allclose(g_pred, oracle.backward(y_true, y_pred)[1], rtol=1e-6)


# ---------------------------------------------------------------------------
# 5. Byte order (the kernels module read raw big-endian bytes).
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_kernels_big_endian_inputs(dtype):
    rng = np.random.default_rng(5)
    y_true = rng.standard_normal((3, 5, 4)).astype(dtype)
    y_pred = rng.standard_normal((3, 5, 4)).astype(dtype)
    lengths = np.array([5, 2, 0], np.int64)
    state = np.linspace(0, 1, st.STATE_SIZE)
    state[st.CLEAN_STEPS] = state[st.STEPS] = 3.0
    state[st.WINDOW_COUNT] = state[st.RING_HEAD] = 3.0
    native = kernels.forward(y_true, y_pred, lengths, state, loss_type="huber")
    big = lambda a: a.astype(a.dtype.newbyteorder(">"))  # noqa: E731
    swapped = kernels.forward(big(y_true), big(y_pred), big(lengths), big(state), loss_type="huber")
    for key in native:
        np.testing.assert_array_equal(np.asarray(swapped[key]), np.asarray(native[key]), key)
    g_native = kernels.backward(
        y_true,
        y_pred,
        lengths,
        native["sample_weights"],
        np.asarray(native["loss"]),
        np.ones(3, native["loss"].dtype),
    )
    g_swapped = kernels.backward(
        big(y_true),
        big(y_pred),
        big(lengths.astype(np.int32)),
        native["sample_weights"],
        np.asarray(native["loss"]),
        np.ones(3, native["loss"].dtype),
    )
    for a, b in zip(g_native, g_swapped):
        np.testing.assert_array_equal(a, b)


def test_kernels_big_endian_ones_give_loss_one():
    ones = np.ones((2, 3, 4), ">f4")
    out = kernels.forward(ones, np.zeros((2, 3, 4), ">f4"), np.array([3, 1], ">i4"))
    assert float(out["loss"]) == 1.0


# ---------------------------------------------------------------------------
# 6. One rule for a corrupted incoming state.
_CORRUPT = [np.nan, np.inf, -np.inf, -1.0, -0.5, 0.5, 2.5, 1e300, 2.0**60, 11.0, 10.0, 3.0]


@hst.composite
def corrupted_states(draw):
    s = np.zeros(st.STATE_SIZE)
    s[st.STEPS] = draw(hst.integers(0, 50))
    s[st.CLEAN_STEPS] = draw(hst.integers(0, 50))
    s[st.RUNNING_MEAN] = draw(hst.floats(0, 5))
    count = draw(hst.integers(0, st.WINDOW_SIZE))
    s[st.WINDOW_COUNT] = count
    s[st.RING_HEAD] = count % st.WINDOW_SIZE
    s[st.RING_START :] = [draw(hst.floats(0, 5)) for _ in range(st.WINDOW_SIZE)]
    for _ in range(draw(hst.integers(0, 4))):
        s[draw(hst.integers(0, st.STATE_SIZE - 1))] = draw(hst.sampled_from(_CORRUPT))
    return s


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=corrupted_states(), clean=hst.booleans())
def test_corrupted_state_same_rule_everywhere(state, clean):
    y_true = np.zeros((2, 3, 2), np.float32)
    y_pred = np.full((2, 3, 2), 0.75, np.float32)
    if not clean:
        y_pred[1, 0, 0] = np.nan
    results = {name: fn(y_true, y_pred, None, state)["state"] for name, fn in IMPLS.items()}
    want = oracle.next_state(state, 0.75, 0 if clean else 1, 12)
    for name, got in results.items():
        np.testing.assert_array_equal(got, results["fused"], err_msg=name)
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0, err_msg=name)
    # Finite everywhere but the window variance, which a finite window of
    # values near 1e300 legitimately overflows.
    kept = np.delete(results["fused"], st.WINDOW_VARIANCE)
    assert np.all(np.isfinite(kept))


def test_corrupted_window_count_regression():
    """window_count NaN or negative: the reference used to differ from the op."""
    for bad in (np.nan, -5.0):
        state = np.zeros(st.STATE_SIZE)
        state[st.WINDOW_COUNT] = bad
        y = np.ones((1, 2, 2), np.float32)
        fused = _op(y * 0, y, None, state)["state"]
        ref = _ref(y * 0, y, None, state)["state"]
        np.testing.assert_array_equal(fused, ref)
        assert fused[st.WINDOW_COUNT] == 1 and fused[st.WINDOW_MEAN] == 1


def test_sanitize_leaves_states_the_op_wrote_unchanged():
    rng = np.random.default_rng(11)
    state = None
    for step in range(25):
        y_pred = rng.standard_normal((2, 3, 2)).astype(np.float32)
        if step % 7 == 3:
            y_pred[0, 0, 0] = np.inf
        state = _op(np.zeros((2, 3, 2), np.float32), y_pred, None, state)["state"]
        np.testing.assert_array_equal(oracle.sanitized(state), state)


# ---------------------------------------------------------------------------
# 7. State dtypes and huber_delta types.
BAD_STATE_DTYPES = [np.float32, np.int32, np.int64, np.bool_, np.complex128, np.float16]


@pytest.mark.parametrize("dtype", BAD_STATE_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_state_of_another_dtype_is_refused(impl, dtype):
    y = np.ones((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match=rf"state.*{np.dtype(dtype).name}"):
        IMPLS[impl](y, y, None, np.zeros(st.STATE_SIZE, dtype))


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_state_big_endian_float64_is_accepted(impl):
    y = np.ones((1, 2, 3), np.float32)
    state = np.arange(st.STATE_SIZE, dtype=">f8") * 0
    out = IMPLS[impl](y, y * 2, None, state)
    assert out["state"][st.LAST_LOSS] == 1.0


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("delta", [True, False, np.bool_(True), "1.0", None, [1.0]], ids=repr)
def test_huber_delta_must_be_a_real_number(impl, delta):
    y = np.ones((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match="huber_delta"):
        IMPLS[impl](y, y, loss_type="huber", huber_delta=delta)


# ---------------------------------------------------------------------------
# 10. num_threads.
@pytest.mark.parametrize("threads", [-1, 257, 400, 2**40])
def test_num_threads_bounded(threads):
    y = np.ones((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match=rf"num_threads.*{threads}"):
        kernels.forward(y, y, num_threads=threads)
    with pytest.raises(ValueError, match="num_threads"):
        kernels.backward(
            y, y, None, np.zeros((2, 1)), np.float32(1), np.ones(1, np.float32), num_threads=threads
        )


_THREAD_LIMIT_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from myxtts_ops import kernels
    y = np.ones((256, 1, 1), np.float32)
    kernels.forward(y, y, num_threads=2)  # warm up: imports and allocations done
    # Leave ~64 MiB of address space: far less than 255 thread stacks need.
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + (64 << 20), resource.RLIM_INFINITY))
    try:
        kernels.forward(y, y, num_threads=256)
    except RuntimeError as err:
        print("RAISED", err)
    else:
        print("NO ERROR")
    out = kernels.forward(y, y * 3, num_threads=1)
    print("AFTER", float(out["loss"]))
    """
)


@pytest.mark.skipif(
    "asan" in os.environ.get("LD_PRELOAD", ""),
    reason="AddressSanitizer reserves terabytes of address space",
)
def _address_limit_child(script, timeout, skip_reason):
    """stdout of ``script`` run in a child that sets an address-space limit;
    the test is skipped when the child printed NO ERROR (the limit did not bite)."""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
        cwd=TESTS_DIR,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    if "NO ERROR" in proc.stdout:
        pytest.skip(skip_reason)
    return proc.stdout


def test_thread_that_cannot_start_raises_instead_of_aborting():
    out = _address_limit_child(
        _THREAD_LIMIT_SCRIPT, 120, "every thread started under the address-space limit"
    )
    assert "RAISED could not start worker thread" in out and "num_threads" in out, out
    assert "AFTER 2.0" in out, out


_HOST_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource
    import tensorflow as tf
    import myxtts_ops
    one = tf.ones([1, 1, 1])
    myxtts_ops.masked_mel_loss(one, one)  # warm up: imports and allocations done
    # Empty samples: the outputs take 2.5 GiB ([B] float32, [2, B] float64) and
    # the kernel's per-sample buffers 1 GiB each.
    y = tf.zeros([2**27, 0, 80])
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    # Room for the outputs, not for the buffers (nothing is touched, so this
    # takes no memory).
    resource.setrlimit(resource.RLIMIT_AS, (used + (3 << 30), resource.RLIM_INFINITY))
    try:
        out = myxtts_ops.masked_mel_loss(y, y)
    except tf.errors.ResourceExhaustedError as err:
        print("RAISED", err.message)
    else:
        print("NO ERROR", float(out.loss))
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("AFTER", float(myxtts_ops.masked_mel_loss(0 * one, one).loss))
    """
)


@pytest.mark.skipif(
    "asan" in os.environ.get("LD_PRELOAD", ""),
    reason="AddressSanitizer reserves terabytes of address space",
)
def test_host_memory_running_out_in_the_op_raises_instead_of_crashing():
    """A failed host allocation inside the op (its per-sample buffers) is a
    ResourceExhaustedError naming the op and the batch: an exception that
    crossed TF's frames ended the process."""
    out = _address_limit_child(
        _HOST_MEMORY_SCRIPT, 300, "the buffers fitted under the address-space limit"
    )
    assert "} MyxttsOps>MaskedMelLoss: out of host memory" in out, out
    assert "(batch 134217728)" in out and "AFTER 1.0" in out, out


# ---------------------------------------------------------------------------
# 11. Unclear errors.
@pytest.mark.parametrize("impl", ["fused", "reference", "kernels"])
@pytest.mark.parametrize(
    "delta", [1e-39, 1.1754942e-38, 1e-320, 5e-324, float("inf"), -1e-308, float("nan")]
)
def test_huber_delta_below_the_smallest_normal_float32_refused_naming_the_value(impl, delta):
    y = np.ones((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match=rf"huber_delta.*got {delta!r}"):
        IMPLS[impl](y, y, loss_type="huber", huber_delta=delta)


def test_huber_delta_raw_op_names_the_value():
    """The op itself (no Python check) applies the same rule and message."""
    lib = myxtts_ops.load_ops()
    y = tf.ones((1, 2, 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"huber_delta.*got 1e-320"):
        lib.myxtts_ops_masked_mel_loss(
            y_true=y,
            y_pred=y,
            lengths=tf.zeros([0], tf.int32),
            state=tf.zeros([st.STATE_SIZE], tf.float64),
            huber_delta=tf.constant(1e-320, tf.float64),
            Tout=tf.float32,
            loss_type="huber",
            use_lengths=False,
        )


@pytest.mark.parametrize("impl", ["fused", "reference", "kernels"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_smallest_huber_delta_is_the_smallest_normal_float32(impl, dtype):
    """At huber_delta = FLT_MIN every element past it is linear: |d| = 1e30
    costs delta * (1e30 - delta / 2), not 0 (a delta flushed to zero)."""
    delta = float(np.finfo(np.float32).tiny)
    y = np.zeros((1, 1, 2), dtype)
    out = IMPLS[impl](y, np.full_like(y, 1e30), loss_type="huber", huber_delta=delta)
    np.testing.assert_allclose(float(out["loss"]), delta * 1e30, rtol=1e-6)


def test_second_order_gradient_raises_clear_error():
    y = tf.constant(np.random.default_rng(0).random((2, 3, 4)), tf.float32)
    x = tf.constant(np.random.default_rng(1).random((2, 3, 4)), tf.float32)
    with pytest.raises(HigherOrderGradientError, match="second-order"):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = myxtts_ops.masked_mel_loss(y, x, loss_type="huber").loss
            grad = inner.gradient(loss, x)
        outer.gradient(grad, x)


def test_forward_mode_gradient_raises_clear_error():
    y = tf.constant(np.zeros((2, 3, 4)), tf.float32)
    x = tf.constant(np.ones((2, 3, 4)), tf.float32)
    with pytest.raises(HigherOrderGradientError, match="forward-mode"):
        with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)) as acc:
            loss = myxtts_ops.masked_mel_loss(y, x).loss
        acc.jvp(loss)


@pytest.mark.parametrize(
    "shape",
    [(2**62, 2**62, 80), (2**40, 2**20, 80), (-1, 3, 80), (4, -3, 80), (4, 3, -80), (1, 2**31, 1)],
)
def test_cuda_workspace_size_checks_shape(shape):
    with pytest.raises(ValueError, match=r"sizes|too large|exceeds"):
        kernels.cuda_workspace_size(*shape)


def test_cuda_workspace_size_takes_no_dtype():
    assert kernels.cuda_workspace_size(2, 3, 4) >= 0
    with pytest.raises(TypeError):
        kernels.cuda_workspace_size(2, 3, 4, "float32")


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_huge_lengths_named_as_passed(mode):
    y = tf.ones((2, 3, 2))
    fn = myxtts_ops.masked_mel_loss if mode == "eager" else tf.function(myxtts_ops.masked_mel_loss)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"lengths\[0\] = 10000000000"):
        fn(y, y, tf.constant([10**10, 1], tf.int64))
    with pytest.raises(ValueError, match=r"lengths\[0\] = 10000000000"):
        kernels.forward(y.numpy(), y.numpy(), np.array([10**10, 1], np.int64))


@pytest.mark.parametrize("lengths", [[np.nan, 2.0], [1e10, 1.0]], ids=["nan", "1e10"])
def test_float_lengths_refused_by_dtype(lengths):
    y = np.ones((2, 3, 2), np.float32)
    for impl in IMPLS.values():
        with pytest.raises(ValueError, match=r"lengths.*(int32 or int64|float)"):
            impl(y, y, np.array(lengths))


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize(
    "values,index,shown",
    [
        ([np.nan, 2.0], 0, "nan"),
        ([3.0, 1e10], 1, "1e+10"),
        ([5.9, 2.0], 0, "5.9"),
        ([1.0, -2.0], 1, "-2"),
    ],
)
def test_float_lengths_name_the_value_passed(mode, values, index, shown):
    """The op-side conversion the loss side uses for Keras' float lengths."""
    from myxtts_ops.validation import integral_lengths

    fn = integral_lengths if mode == "eager" else tf.function(integral_lengths)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        fn(tf.constant(values, tf.float32)).numpy()
    msg = str(info.value)
    # Eager: "...index'\n1\nb'value'\n1e+10"; graph: "...index] [1] [value] [1e+10]".
    assert re.search(
        rf"lengths must be whole numbers.*index\W+{index}\W+b?'?value\W+"
        rf"{re.escape(shown)}\b",
        msg,
        re.S,
    ), msg
    assert "-2147483648" not in msg


def test_float_lengths_whole_numbers_convert():
    from myxtts_ops.validation import integral_lengths

    out = integral_lengths(tf.constant([5.0, 0.0, 300.0], tf.float32))
    assert out.dtype == tf.int64 and out.numpy().tolist() == [5, 0, 300]
    ints = tf.constant([1, 2], tf.int32)
    assert integral_lengths(ints) is ints
    assert integral_lengths(tf.zeros([0], tf.float32)).shape == [0]
    with pytest.raises(ValueError, match="lengths.*bool"):
        integral_lengths(tf.constant([True]))


# ---------------------------------------------------------------------------
# Arguments of unknown rank at trace time, checked when the graph runs or compiles.
_RANK_CASES = {
    "y_true rank 2": ("y_true", [2, 5], [2, 5, 3], [5, 3], None, r"\[2[, ]5\]"),
    "y_true rank 4": ("y_true", [2, 5, 3, 1], [2, 5, 3, 1], [5, 3], None, r"\[2[, ]5[, ]3"),
    "lengths rank 2": ("lengths", [2, 5, 3], [2, 5, 3], [[5], [3]], None, r"\[2[, ]1\]"),
    "state rank 2": ("state", [2, 5, 3], [2, 5, 3], [5, 3], [st.STATE_SIZE, 1], r"1\]"),
}


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("case", list(_RANK_CASES))
def test_unknown_rank_arguments_are_named(case, impl, jit):
    """A wrong rank hidden from tracing (input_signature without shapes) is an
    error naming the argument and its shape, in a graph and under XLA, for the
    op and its reference alike."""
    name, true_shape, pred_shape, lengths, state_shape, shape_re = _RANK_CASES[case]
    fn = {"fused": myxtts_ops.masked_mel_loss, "reference": reference.masked_mel_loss}[impl]
    args = [tf.ones(true_shape), tf.zeros(pred_shape), tf.constant(lengths)]
    if state_shape is not None:
        args.append(tf.zeros(state_shape, tf.float64))
    signature = [tf.TensorSpec(None, a.dtype) for a in args]
    run = tf.function(lambda *a: fn(*a).loss, input_signature=signature, jit_compile=jit)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{name}\b.*{shape_re}"):
        run(*args)
