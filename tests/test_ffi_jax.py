"""The XLA typed-FFI Host handler (what the TF op lowers to under XLA:CPU), run
through JAX instead of TensorFlow: the capsule export of the pybind11 module
and the registration route the GPU run uses for the CUDA handler.

The handler runs the same CPU kernels as ``myxtts_ops.kernels.forward`` /
``backward``: results are bitwise equal, for every dtype, lengths int32 /
int64 / absent, both loss types and normalizations, NaN/Inf in valid frames
and in padding. Skipped when JAX is not installed.
"""

import numpy as np
import pytest

from conftest import make_inputs

jax = pytest.importorskip("jax")
from myxtts_ops import jax_ffi, kernels  # noqa: E402

pytestmark = pytest.mark.skipif(
    not hasattr(kernels, "ffi_targets"), reason="kernels module built without the XLA FFI"
)

CONFIGS = [("l1", 1.0, "per_sample"), ("huber", 0.5, "global"), ("huber", 2.0, "per_sample")]


@pytest.fixture(scope="module", autouse=True)
def registered():
    jax_ffi.register("cpu")


def _jit_forward(loss_type, delta, norm):
    return jax.jit(
        lambda a, b, n, s: jax_ffi.forward(
            a, b, n, s, loss_type=loss_type, normalization=norm, huber_delta=delta
        )
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("lengths", ["int32", "int64", None])
@pytest.mark.parametrize("config", CONFIGS)
def test_host_handler_through_jax_bitwise(rng, dtype, lengths, config):
    loss_type, delta, norm = config
    shape = (5, 13, 7)
    y_true, y_pred, lens = make_inputs(
        rng,
        shape,
        dtype,
        lengths="random" if lengths else None,
        lengths_dtype=np.dtype(lengths or "int32"),
        nonfinite_valid=4,
        nonfinite_padding=4,
    )
    # A state some steps in: the handler updates it exactly as the kernels module.
    state = kernels.forward(y_true, y_pred, lens, np.zeros(kernels.STATE_SIZE))["state"]
    out = _jit_forward(loss_type, delta, norm)(y_true, y_pred, lens, state)
    want = kernels.forward(
        y_true, y_pred, lens, state, loss_type=loss_type, huber_delta=delta, normalization=norm
    )
    names = ("loss", "per_sample", "nonfinite_count", "state", "sample_weights")
    names += ("active_count", "valid_count")
    for name, got in zip(names, out):
        np.testing.assert_array_equal(np.asarray(got), want[name], err_msg=name)
    g_loss = np.asarray(1.5, want["loss"].dtype)
    g_ps = rng.standard_normal(shape[0]).astype(want["loss"].dtype)
    grads = jax.jit(
        lambda a, b, n, w, gl, gp: jax_ffi.backward(
            a, b, n, w, gl, gp, loss_type=loss_type, huber_delta=delta
        )
    )(y_true, y_pred, lens, out[4], g_loss, g_ps)
    want_g = kernels.backward(
        y_true,
        y_pred,
        lens,
        want["sample_weights"],
        g_loss,
        g_ps,
        loss_type=loss_type,
        huber_delta=delta,
    )
    np.testing.assert_array_equal(np.asarray(grads[0]), want_g[0])
    np.testing.assert_array_equal(np.asarray(grads[1]), want_g[1])


def test_host_handler_skips_grad_y_true(rng):
    y_true, y_pred, lens = make_inputs(rng, (3, 9, 4), "float32", lengths="random")
    out = _jit_forward("l1", 1.0, "per_sample")(y_true, y_pred, lens, np.zeros(kernels.STATE_SIZE))
    args = (y_true, y_pred, lens, out[4], np.float32(1.0), np.zeros(3, np.float32))
    full = jax_ffi.backward(*args)
    pred_only = jax_ffi.backward(*args, want_grad_y_true=False)
    assert pred_only[0].size == 0
    np.testing.assert_array_equal(np.asarray(pred_only[1]), np.asarray(full[1]))


def test_host_handler_refuses_bad_lengths():
    y = np.zeros((2, 3, 2), np.float32)
    fwd = _jit_forward("l1", 1.0, "per_sample")
    with pytest.raises(Exception, match=r"lengths\[1\] = 7 is outside \[0, 3\]"):
        jax.block_until_ready(fwd(y, y, np.array([1, 7], np.int32), np.zeros(kernels.STATE_SIZE)))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_backward_checks_its_lengths(dtype):
    """jax_ffi.backward runs the length check first (the CUDA handler only
    clamps): a bad length is refused by index and value, whole float lengths
    give the int32 lengths' gradient."""
    rng = np.random.default_rng(3)
    y_true = rng.standard_normal((2, 3, 2)).astype(np.float32)
    y_pred = rng.standard_normal((2, 3, 2)).astype(np.float32)
    fwd = jax_ffi.forward(y_true, y_pred, np.array([3, 1], np.int32))
    rest = (fwd[4], np.ones((), np.float32), np.zeros((2,), np.float32))
    want = jax_ffi.backward(y_true, y_pred, np.array([3, 1], np.int32), *rest)
    got = jax_ffi.backward(y_true, y_pred, np.array([3, 1], dtype), *rest)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(Exception, match=r"lengths\[1\] = 7 is outside \[0, 3\]"):
        jax.block_until_ready(
            jax.jit(jax_ffi.backward)(y_true, y_pred, np.array([1, 7], dtype), *rest)
        )


def test_host_handler_refuses_bad_huber_delta():
    y = np.zeros((2, 3, 2), np.float32)
    with pytest.raises(Exception, match="huber_delta"):
        jax.block_until_ready(
            _jit_forward("huber", -1.0, "per_sample")(y, y, None, np.zeros(kernels.STATE_SIZE))
        )


def test_host_handler_refuses_a_bad_rank():
    """A y_true that is not [B, T, M] gets the op's own rank message (the
    workspace result is sized only for rank 3)."""
    y = np.zeros((2, 3), np.float32)
    with pytest.raises(Exception, match=r"y_true must have rank 3 \[batch, frames, mels\]"):
        jax.block_until_ready(
            _jit_forward("l1", 1.0, "per_sample")(y, y, None, np.zeros(kernels.STATE_SIZE))
        )


@pytest.mark.parametrize(
    "change, expected",
    [
        ("y_true", r"y_true must be float16, bfloat16, float32 or float64, got y_true dtype=int32"),
        ("y_pred", r"y_pred must have the dtype of y_true \(float32\), got y_pred dtype=float64"),
        ("lengths", r"lengths must be int32 or int64, got lengths dtype=float32"),
        ("state", r"state must be float64, got state dtype=float32"),
    ],
)
def test_host_handler_names_a_bad_dtype(change, expected):
    """A caller building the custom call itself (JAX) gets the input and its dtype."""
    args = {
        "y_true": np.zeros((2, 3, 2), np.float32),
        "y_pred": np.zeros((2, 3, 2), np.float32),
        "lengths": np.array([3, 1], np.int32),
        "state": np.zeros(kernels.STATE_SIZE, np.float64),
    }
    args[change] = args[change].astype(
        {"y_true": np.int32, "y_pred": np.float64, "lengths": np.float32, "state": np.float32}[
            change
        ]
    )
    if change == "y_true":
        args["y_pred"] = args["y_pred"].astype(np.int32)
    with pytest.raises(Exception, match=expected):
        jax.block_until_ready(jax_ffi.forward(*args.values()))


@pytest.mark.parametrize("name", ["sample_weights", "grad_loss", "grad_per_sample"])
def test_host_handler_names_a_bad_backward_dtype(name):
    y = np.zeros((2, 3, 2), np.float32)
    args = {
        "sample_weights": np.zeros((2, 2), np.float64),
        "grad_loss": np.ones((), np.float32),
        "grad_per_sample": np.zeros((2,), np.float32),
    }
    args[name] = args[name].astype(np.float16)
    with pytest.raises(Exception, match=rf"{name} must be \w+.*got (\w+ )?dtype=float16"):
        jax.block_until_ready(jax_ffi.backward(y, y, np.array([3, 1], np.int32), *args.values()))


def test_register_names_a_missing_platform():
    with pytest.raises(
        RuntimeError, match=r"no 'TPU' FFI handlers in this build \(it has \[.*'cpu'"
    ):
        jax_ffi.register("TPU")


def test_target_names_come_from_the_build():
    assert set(kernels.ffi_targets()["cpu"]) == {
        jax_ffi.FORWARD_TARGET,
        jax_ffi.BACKWARD_TARGET,
        jax_ffi.CHECK_LENGTHS_TARGET,
    }


@pytest.mark.parametrize("limit", [2**31, 2**40, -1])
def test_check_lengths_handler_refuses_a_limit_past_int32(limit):
    """The checked lengths are int32: a limit outside [0, 2**31 - 1] is refused
    (2**33 under a limit of 2**40 came back as 0 before)."""
    for lengths in (np.array([2**33, 1], np.int64), np.zeros([0], np.int32)):
        with pytest.raises(Exception, match=rf"limit must be in \[0, 2\^31 - 1\].*limit={limit}"):
            np.asarray(jax_ffi.check_lengths(lengths, "mel_lengths", limit))


def test_check_lengths_handler_runs_when_its_result_is_unused():
    """A check is a side effect: XLA must not drop it from a jitted function
    that returns the lengths it was given rather than the check's result."""

    def fn(n):
        jax_ffi.check_lengths(n, "text_lengths", 5)
        return n * 2

    with pytest.raises(Exception, match=r"text_lengths\[1\] = 6 is outside \[0, 5\]"):
        np.asarray(jax.jit(fn)(np.array([1, 6], np.int32)))
    np.testing.assert_array_equal(np.asarray(jax.jit(fn)(np.array([1, 5], np.int32))), [2, 10])


@pytest.mark.parametrize("jit", [False, True])
def test_check_lengths_handler(jit):
    """The length check's Host handler: int32 lengths unchanged, int64 and float
    ones as int32, or its message naming the input, index and value as passed;
    an empty batch passes."""
    fn = lambda n: jax_ffi.check_lengths(n, "text_lengths", 5, " (the note)")  # noqa: E731
    fn = jax.jit(fn) if jit else fn
    lengths = np.array([0, 5, 3], np.int32)
    np.testing.assert_array_equal(np.asarray(fn(lengths)), lengths)
    assert np.asarray(fn(np.zeros([0], np.int32))).shape == (0,)
    for bad, shown in (([0, 6, 3], r"\[1\] = 6"), ([-2, 1, 1], r"\[0\] = -2")):
        with pytest.raises(
            Exception, match=rf"text_lengths{shown} is outside \[0, 5\] \(the note\)"
        ):
            np.asarray(fn(np.array(bad, np.int32)))
    # int64 and float lengths: checked and returned as int32, a bad value shown as passed.
    for dtype in (np.int64, np.float16, np.float32, np.float64):
        got = np.asarray(fn(np.array([1, 5, 0], dtype)))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, [1, 5, 0])
    for bad, dtype, shown in (
        ([1, 2**40], np.int64, r"\[1\] = 1099511627776 is outside"),
        ([3.9, 1], np.float32, r"\[0\] = 3\.9 is not a whole number in"),
        ([3.9, 1], np.float64, r"\[0\] = 3\.9 is not a whole number in"),
        ([1, np.nan], np.float32, r"\[1\] = nan is not a whole number in"),
        ([-3.0, 1], np.float64, r"\[0\] = -3 is outside"),
        ([6.0, 1], np.float16, r"\[0\] = 6 is outside"),
    ):
        with pytest.raises(Exception, match=rf"text_lengths{shown} \[0, 5\] \(the note\)"):
            np.asarray(fn(np.array(bad, dtype)))
