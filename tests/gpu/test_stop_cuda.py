"""CUDA kernels of the stop-token loss (myxtts_ops.kernels.cuda_stop_*) against
the float64 oracle (tests/oracle.py: stop_bce) and the CPU kernels.

Runs on a CUDA machine with CuPy or PyTorch (no TensorFlow); skipped elsewhere.
Output buffers start poisoned with 0xFF bytes (NaN, -1) and at unaligned
addresses, so an element the kernels fail to write cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest

import oracle as ref  # tests/oracle.py (tests/ is on sys.path: tests/conftest.py)

from .conftest import DevBuf

CONFIG = dict(positive_weight=5.0, label_smoothing=0.1, prob_min=1e-7)


def make_case(rng, batch, frames, lengths_kind, poison_valid, poison_padding):
    target = (rng.random((batch, frames)) < 0.2).astype(np.float32)
    pred = rng.uniform(0.001, 0.999, (batch, frames)).astype(np.float32)
    if frames:
        pred.reshape(-1)[:: max(1, batch * frames // 7)] = 0.0  # clipped: no gradient
    if lengths_kind == "full":
        lengths = np.full(batch, frames, np.int32)
    elif lengths_kind == "zero":
        lengths = np.zeros(batch, np.int32)
    else:
        lengths = rng.integers(0, frames + 1, batch).astype(np.int32)
    valid = np.arange(frames)[None, :] < lengths[:, None]
    for on, mask in ((poison_valid, valid), (poison_padding, ~valid)):
        cells = np.argwhere(mask)
        if on and len(cells):
            for b, t in cells[rng.permutation(len(cells))[:5]]:
                (target if rng.random() < 0.5 else pred)[b, t] = rng.choice([np.nan, np.inf])
    return target, pred, lengths


def run_cuda(kernels, lib, target, pred, lengths, grad_sums, *, want_target=True, stream=None):
    batch, frames = target.shape
    bufs = {
        "target": DevBuf(lib, target.shape, "float32", 1),
        "pred": DevBuf(lib, target.shape, "float32", 3),
        "lengths": DevBuf(lib, (batch,), "int32", 1),
        "grad_sums": DevBuf(lib, (batch,), "float32", 2),
    }
    for name, host in (("target", target), ("pred", pred), ("lengths", lengths)):
        bufs[name].upload(host)
    bufs["grad_sums"].upload(grad_sums)
    out = {
        "sums": DevBuf(lib, (batch,), "float32", 1),
        "counts": DevBuf(lib, (batch,), "int32", 3),
        "nonfinite": DevBuf(lib, (), "int64", 1),
        "grad_target": DevBuf(lib, target.shape, "float32", 1) if want_target else None,
        "grad_pred": DevBuf(lib, target.shape, "float32", 2),
    }
    ptr = lib.stream_ptr(stream)
    kernels.cuda_stop_forward(
        bufs["target"].arr,
        bufs["pred"].arr,
        bufs["lengths"].arr,
        out["sums"].arr,
        out["counts"].arr,
        out["nonfinite"].arr,
        stream=ptr,
        **CONFIG,
    )
    kernels.cuda_stop_backward(
        bufs["target"].arr,
        bufs["pred"].arr,
        bufs["lengths"].arr,
        bufs["grad_sums"].arr,
        None if out["grad_target"] is None else out["grad_target"].arr,
        out["grad_pred"].arr,
        stream=ptr,
        **CONFIG,
    )
    lib.synchronize(stream)
    return {k: None if v is None else v.host() for k, v in out.items()}


@pytest.mark.parametrize("poison", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("lengths_kind", ["full", "zero", "mixed"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (5, 1031), (64, 1000), (2, 70001)])
def test_matches_the_float64_oracle(kernels, lib, shape, lengths_kind, poison):
    rng = np.random.default_rng(abs(hash((shape, lengths_kind, poison))) % 2**32)
    target, pred, lengths = make_case(rng, *shape, lengths_kind, *poison)
    grad_sums = rng.uniform(-2.0, 2.0, shape[0]).astype(np.float32)
    got = run_cuda(kernels, lib, target, pred, lengths, grad_sums)
    want = ref.stop_bce(target, pred, lengths, grad_sums, **CONFIG)
    np.testing.assert_array_equal(got["counts"], want.counts)
    assert int(got["nonfinite"]) == want.nonfinite
    np.testing.assert_allclose(got["sums"], want.sums, rtol=2e-6, atol=1e-5)
    for name in ("grad_target", "grad_pred"):
        w = getattr(want, name)
        scale = max(1.0, float(np.abs(w).max(initial=0.0)))
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-6 * scale, err_msg=name)


def test_agrees_with_the_cpu_kernels_and_is_deterministic(kernels, lib):
    rng = np.random.default_rng(11)
    target, pred, lengths = make_case(rng, 33, 4099, "mixed", True, True)
    grad_sums = rng.uniform(-1.0, 1.0, 33).astype(np.float32)
    first = run_cuda(kernels, lib, target, pred, lengths, grad_sums)
    cpu = kernels.stop_forward(target, pred, lengths, **CONFIG)
    cpu_gt, cpu_gp = kernels.stop_backward(target, pred, lengths, grad_sums, **CONFIG)
    np.testing.assert_array_equal(first["counts"], cpu["counts"])
    assert int(first["nonfinite"]) == int(cpu["nonfinite_count"])
    np.testing.assert_allclose(first["sums"], cpu["sums"], rtol=2e-6)
    np.testing.assert_allclose(first["grad_pred"], cpu_gp, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(first["grad_target"], cpu_gt, rtol=2e-6, atol=1e-7)
    for _ in range(5):
        again = run_cuda(kernels, lib, target, pred, lengths, grad_sums)
        for key, value in first.items():
            assert value.tobytes() == again[key].tobytes(), key


def test_grad_target_is_optional_and_streams_are_honoured(kernels, lib):
    rng = np.random.default_rng(12)
    target, pred, lengths = make_case(rng, 8, 999, "mixed", True, False)
    grad_sums = np.ones(8, np.float32)
    stream = lib.new_stream()
    got = run_cuda(kernels, lib, target, pred, lengths, grad_sums, want_target=False, stream=stream)
    want = ref.stop_bce(target, pred, lengths, grad_sums, **CONFIG)
    assert got["grad_target"] is None
    np.testing.assert_allclose(got["sums"], want.sums, rtol=2e-6, atol=1e-5)
    scale = max(1.0, float(np.abs(want.grad_pred).max()))
    np.testing.assert_allclose(got["grad_pred"], want.grad_pred, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize(
    "lengths, message",
    [([4, -1], r"stop lengths\[1\] = -1 is outside \[0, 4\]"), ([5, 0], r"lengths\[0\] = 5")],
)
def test_bad_lengths_are_refused_before_a_launch(kernels, lib, lengths, message):
    x = np.full([2, 4], 0.5, np.float32)
    with pytest.raises(ValueError, match=message):
        run_cuda(kernels, lib, x, x, np.array(lengths, np.int32), np.ones(2, np.float32))
