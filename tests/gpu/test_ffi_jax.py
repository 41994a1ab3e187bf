"""The CUDA typed-FFI handlers (what the TF op lowers to under XLA:GPU), run
through JAX on the GPU: bitwise equal to the pybind11 launches of the same
kernels, checked against the float64 oracle, bad lengths refused, determinism.

Skipped unless the kernels module has CUDA FFI handlers and JAX sees a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from myxtts_ops import jax_ffi

from . import oracle64 as ref
from .test_cuda_kernels import (
    LOSS_CONFIGS,
    Case,
    check_backward,
    check_forward,
    make_inputs,
    make_lengths,
    seed_of,
)


@pytest.fixture(scope="module")
def jax_gpu(kernels):
    if not hasattr(kernels, "ffi_targets") or "CUDA" not in kernels.ffi_targets():
        pytest.skip("the kernels module has no CUDA FFI handlers")
    try:
        jax = jax_ffi.jax_module()
        devices = jax.devices("gpu")
    except Exception as e:  # noqa: BLE001 - no JAX, or no GPU backend
        pytest.skip(f"JAX with a GPU backend is not available ({type(e).__name__}: {e})")
    jax_ffi.register("CUDA")
    return jax, devices[0]


def _jax_array(jax, host, dtype, device):
    """Host storage array (bfloat16 as uint16 bits) as a jax array on device."""
    import jax.numpy as jnp

    if dtype == "bfloat16":
        host = host.view(jnp.bfloat16)
    return jax.device_put(host, device)


def _host(x, dtype):
    """jax result back to storage layout (bfloat16 as uint16 bits)."""
    a = np.asarray(x)
    return a.view(np.uint16) if dtype == "bfloat16" else a


def _run_jax(jax, device, case, want_grad_y_true=True):
    dt = case.dtype
    yt = _jax_array(jax, case.h_true, dt, device)
    yp = _jax_array(jax, case.h_pred, dt, device)
    lens = None if case.h_lengths is None else jax.device_put(case.h_lengths, device)
    state = jax.device_put(case.state_in, device)
    fwd = jax.jit(
        lambda a, b, n, s: jax_ffi.forward(a, b, n, s, normalization=case.normalization, **case.cfg)
    )
    out = fwd(yt, yp, lens, state)
    got = dict(
        zip(
            ("loss", "per_sample", "nonfinite_count", "state", "sample_weights")
            + ("active_count", "valid_count"),
            (np.asarray(o) for o in out),
        )
    )
    bwd = jax.jit(
        lambda a, b, n, w, gl, gp: jax_ffi.backward(
            a, b, n, w, gl, gp, want_grad_y_true=want_grad_y_true, **case.cfg
        )
    )
    g = bwd(
        yt,
        yp,
        lens,
        out[4],
        jax.device_put(case.g_loss_h, device),
        jax.device_put(case.g_ps_h, device),
    )
    return got, (_host(g[0], dt), _host(g[1], dt))


@pytest.mark.parametrize("dtype", ref.DTYPES)
@pytest.mark.parametrize("lengths_kind", ["none", "zero", "mixed32", "mixed64"])
@pytest.mark.parametrize("config", LOSS_CONFIGS)
def test_ffi_through_jax_matches_pybind_launch(kernels, lib, jax_gpu, dtype, lengths_kind, config):
    jax, device = jax_gpu
    rng = np.random.default_rng(seed_of("ffi_jax", dtype, lengths_kind, config))
    shape = (5, 37, 19)
    lengths = make_lengths(rng, shape[0], shape[1], lengths_kind)
    y_true, y_pred = make_inputs(rng, shape, dtype, lengths, nonfinite=True)
    loss_type, delta, norm = config
    case = Case(
        kernels,
        lib,
        y_true,
        y_pred,
        lengths,
        dtype,
        loss_type=loss_type,
        huber_delta=delta,
        normalization=norm,
        grad_per_sample=rng.standard_normal(shape[0]),
    )
    got, grads = _run_jax(jax, device, case)
    case.forward()
    launched = case.fetch_forward()
    case.backward()
    launched_grads = case.fetch_backward()
    for key, value in launched.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    np.testing.assert_array_equal(grads[0], launched_grads[0], err_msg="grad_y_true")
    np.testing.assert_array_equal(grads[1], launched_grads[1], err_msg="grad_y_pred")
    check_forward(case, got, case.oracle_forward())  # the counts too
    use = ref.valid_finite_mask(case.h_true, case.h_pred, case.h_lengths, case.dtype)
    check_backward(case, grads, case.oracle_backward(got["sample_weights"]), use)


def test_ffi_through_jax_skips_grad_y_true(kernels, lib, jax_gpu):
    jax, device = jax_gpu
    rng = np.random.default_rng(seed_of("ffi_jax_no_true"))
    y_true, y_pred = make_inputs(rng, (3, 8, 4), "float32", None)
    case = Case(kernels, lib, y_true, y_pred, None, "float32")
    _, with_true = _run_jax(jax, device, case)
    _, without = _run_jax(jax, device, case, want_grad_y_true=False)
    assert without[0].size == 0
    np.testing.assert_array_equal(without[1], with_true[1])


def test_ffi_through_jax_refuses_bad_lengths(kernels, lib, jax_gpu):
    jax, device = jax_gpu
    y = np.zeros((2, 3, 2), np.float32)
    case = Case(kernels, lib, y, y, np.array([1, 7], np.int32), "float32")
    with pytest.raises(Exception, match=r"lengths\[1\] = 7 is outside \[0, 3\]"):
        _run_jax(jax, device, case)


def test_ffi_backward_through_jax_refuses_bad_lengths(jax_gpu):
    """Called directly, the backward refuses an out-of-range length (the CUDA
    handler itself clamps it: jax_ffi.backward checks the lengths first)."""
    jax, device = jax_gpu
    y = jax.device_put(np.zeros((2, 3, 2), np.float32), device)
    args = [np.zeros((2, 2), np.float64), np.ones((), np.float32), np.zeros((2,), np.float32)]
    args = [jax.device_put(a, device) for a in args]
    bad = jax.device_put(np.array([1, 7], np.int32), device)
    with pytest.raises(Exception, match=r"lengths\[1\] = 7 is outside \[0, 3\]"):
        jax.block_until_ready(jax.jit(jax_ffi.backward)(y, y, bad, *args))


def test_ffi_through_jax_bitwise_deterministic(kernels, lib, jax_gpu):
    jax, device = jax_gpu
    rng = np.random.default_rng(seed_of("ffi_jax_det"))
    shape = (32, 1000, 80)
    lengths = make_lengths(rng, shape[0], shape[1], "half")
    y_true, y_pred = make_inputs(rng, shape, "float32", lengths)
    case = Case(kernels, lib, y_true, y_pred, lengths, "float32")
    first = _run_jax(jax, device, case)
    for _ in range(19):
        again = _run_jax(jax, device, case)
        for key in first[0]:
            np.testing.assert_array_equal(again[0][key], first[0][key], err_msg=key)
        np.testing.assert_array_equal(again[1][1], first[1][1])


def test_ffi_through_jax_check_lengths(jax_gpu):
    """The length check's CUDA handler (what XTTSLoss runs on every length
    under XLA:GPU): int32 device lengths unchanged, others as int32, or the
    message by index and value."""
    jax, device = jax_gpu
    check = jax.jit(lambda n: jax_ffi.check_lengths(n, "text_lengths", 5, " (note)"))
    good = jax.device_put(np.array([0, 5, 3], np.int32), device)
    np.testing.assert_array_equal(np.asarray(check(good)), [0, 5, 3])
    with pytest.raises(Exception, match=r"text_lengths\[1\] = 6 is outside \[0, 5\] \(note\)"):
        np.asarray(check(jax.device_put(np.array([0, 6, 3], np.int32), device)))
    # Float and int64 device lengths: converted to int32 on the way back, or refused as passed.
    for dtype in (np.int64, np.float32, np.float64):
        got = np.asarray(check(jax.device_put(np.array([0, 5, 3], dtype), device)))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, [0, 5, 3])
    with pytest.raises(Exception, match=r"text_lengths\[2\] = 2\.5 is not a whole number in"):
        np.asarray(check(jax.device_put(np.array([0, 5, 2.5], np.float32), device)))
