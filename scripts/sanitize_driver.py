#!/usr/bin/env python3
"""Tiny forward+backward driver of the CUDA kernels for compute-sanitizer.

    compute-sanitizer --tool memcheck  --error-exitcode 99 python3 scripts/sanitize_driver.py
    compute-sanitizer --tool initcheck --error-exitcode 99 python3 scripts/sanitize_driver.py
    python3 scripts/sanitize_driver.py --count-launches

Runs the masked mel loss in every dtype, and the stop-token loss, on odd shapes (1x1x1, shapes that are not multiples of the
block or vector width, several chunks per sample, lengths 0 / T / None,
int32 / int64, unaligned start addresses) with the framework memory pools
turned off, so every array is its own cudaMalloc and an access one element
past its end is out of bounds for memcheck; outputs and the workspace are
fresh (never written by the host) so initcheck sees any read of an element
the kernels did not write first. Results are compared with the NumPy CPU
kernels. ``--count-launches`` counts kernel launches per call (torch.profiler
when PyTorch is present, else CUDA-graph capture through the driver API).

Needs no TensorFlow; exits 0 with a message when no GPU / CuPy / PyTorch.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

# No caching allocators: exact-size cudaMalloc per array (set before imports).
os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")

ROOT = Path(__file__).resolve().parents[1]
# The installed package; the source tree only without one (scripts/gpu_check.sh
# builds the kernels module into it).
if importlib.util.find_spec("myxtts_ops") is None:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def skip(msg: str) -> None:
    print(f"sanitize_driver: SKIP: {msg}")
    sys.exit(0)


def load_kernels():
    from myxtts_ops import gpu

    reason = gpu.unavailable_reason()
    if reason:
        skip(reason)
    from myxtts_ops import kernels

    return kernels


def load_lib():
    """An array backend with exact-size allocations (CuPy preferred: its pool
    can be switched off at run time)."""
    from myxtts_ops.array_backend import BackendUnavailable, load_backend

    try:
        lib = load_backend()
    except BackendUnavailable as e:
        skip(f"no CUDA array library: {e}")
    lib.exact_allocations()
    return lib


def upload(lib, host: np.ndarray, offset: int = 0):
    """Device copy of ``host``; with offset k the array starts k elements into
    an allocation that ends exactly where the array ends."""
    host = np.asarray(host)
    buf = lib.empty((host.size + offset,), host.dtype.name)
    arr = buf[offset:].reshape(host.shape)
    lib.copy_from_host(arr, host)
    return arr


def bf16_bits(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def make(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(np.float32)
    if dtype == "bfloat16":
        return bf16_bits(x)
    return x.astype(dtype)


def cpu_view(x, dtype):
    if dtype != "bfloat16":
        return x
    import ml_dtypes

    return x.view(ml_dtypes.bfloat16)


CASES = [
    # (shape, lengths kind, offsets of y_true/y_pred/grads)
    ((1, 1, 1), "none", 0),
    ((3, 7, 5), "mixed32", 1),
    ((2, 211, 83), "mixed64", 0),  # several chunks per sample, partial last chunk
    ((4, 33, 80), "zero", 3),
    ((5, 9, 81), "full", 2),
    ((1, 103, 80), "none", 1),
]


def lengths_for(rng, kind, b, t):
    if kind == "none":
        return None
    if kind == "zero":
        return np.zeros(b, np.int32)
    if kind == "full":
        return np.full(b, t, np.int64)
    v = rng.integers(0, t + 1, size=b)
    if b > 1:
        v[0], v[-1] = 0, t
    return v.astype(np.int64 if kind == "mixed64" else np.int32)


def run_case(k, lib, rng, dtype, shape, kind, off, loss_type, norm, stream_ptr, compare=True):
    B, T, M = shape
    t_h, p_h = make(rng, shape, dtype), make(rng, shape, dtype)
    if dtype != "float64" and t_h.size > 4:
        # a NaN (in a valid frame or in padding, depending on the lengths)
        t_h.reshape(-1)[2] = np.uint16(0x7FC0) if dtype == "bfloat16" else np.nan
    L = lengths_for(rng, kind, B, T)
    od = "float64" if dtype == "float64" else "float32"
    bf = "bfloat16" if dtype == "bfloat16" else None
    yt, yp = upload(lib, t_h, off), upload(lib, p_h, off)
    Ld = None if L is None else upload(lib, L)
    state = upload(lib, np.zeros(k.STATE_SIZE))
    loss, per_sample = lib.empty((), od), lib.empty((B,), od)
    nonfinite, new_state = lib.empty((), "int64"), lib.empty((k.STATE_SIZE,), "float64")
    weights = lib.empty((2, B), "float64")
    active, valid = lib.empty((), "int64"), lib.empty((), "int64")
    workspace = lib.empty((max(k.cuda_workspace_size(B, T, M), 1),), "uint8")
    cfg = dict(loss_type=loss_type, huber_delta=0.75)
    lib.synchronize()  # uploads ran on the default stream; the launch may be on another
    k.cuda_forward(
        yt,
        yp,
        Ld,
        state,
        loss,
        per_sample,
        nonfinite,
        new_state,
        weights,
        workspace,
        normalization=norm,
        stream=stream_ptr,
        dtype=bf,
        active_count=active,
        valid_count=valid,
        **cfg,
    )
    g_loss = upload(lib, np.asarray(1.25, dtype=od))
    g_ps = upload(lib, np.linspace(-1.0, 1.0, B).astype(od))
    sd = t_h.dtype
    gt_buf, gp_buf = lib.empty((t_h.size + off,), sd), lib.empty((t_h.size + off,), sd)
    gt, gp = gt_buf[off:].reshape(shape), gp_buf[off:].reshape(shape)
    lib.synchronize()
    k.cuda_backward(yt, yp, Ld, weights, g_loss, g_ps, gt, gp, stream=stream_ptr, dtype=bf, **cfg)
    lib.synchronize()
    if not compare:
        return
    want = k.forward(
        cpu_view(t_h, dtype),
        cpu_view(p_h, dtype),
        L,
        np.zeros(k.STATE_SIZE),
        normalization=norm,
        **cfg,
    )
    got_loss = float(lib.to_host(loss))
    tol = 1e-12 if dtype == "float64" else 2e-5
    ok = np.isclose(got_loss, float(want["loss"]), rtol=tol, atol=1e-7)
    ok &= int(lib.to_host(nonfinite)) == int(want["nonfinite_count"])
    ok &= int(lib.to_host(active)) == int(want["active_count"])
    ok &= int(lib.to_host(valid)) == int(want["valid_count"])
    ok &= np.array_equal(lib.to_host(weights), want["sample_weights"])
    w_t, w_p = k.backward(
        cpu_view(t_h, dtype),
        cpu_view(p_h, dtype),
        L,
        want["sample_weights"],
        np.asarray(1.25, od),
        np.linspace(-1.0, 1.0, B).astype(od),
        **cfg,
    )
    g = lib.to_host(gp)
    g = g.view(np.uint16) if dtype == "bfloat16" else g
    w = np.asarray(w_p).view(np.uint16) if dtype == "bfloat16" else np.asarray(w_p)
    if dtype == "bfloat16":
        g = (g.astype(np.uint32) << 16).view(np.float32)
        w = (w.astype(np.uint32) << 16).view(np.float32)
    gtol = {"float16": 1e-3, "bfloat16": 1e-2, "float32": 1e-6, "float64": 1e-13}[dtype]
    ok &= bool(np.allclose(g.astype(np.float64), np.asarray(w, np.float64), rtol=gtol, atol=1e-7))
    if not ok:
        print(
            f"MISMATCH {dtype} {shape} {kind} {loss_type} {norm}: loss {got_loss} vs "
            f"{float(want['loss'])}"
        )
        raise SystemExit(1)


STOP_CASES = [((1, 1), 0), ((3, 7), 1), ((4, 1031), 3), ((2, 4099), 2)]
STOP_CONFIG = dict(positive_weight=5.0, label_smoothing=0.1, prob_min=1e-7)


def run_stop_case(k, lib, rng, shape, off, stream_ptr):
    """The stop-token kernels on one shape (lengths 0, T and between; a NaN),
    compared with the CPU kernels."""
    B, T = shape
    t_h = (rng.random(shape) < 0.2).astype(np.float32)
    p_h = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    p_h.reshape(-1)[-1] = np.nan
    L = rng.integers(0, T + 1, size=B).astype(np.int32)
    L[0] = T
    if B > 1:
        L[-1] = 0
    g_h = np.linspace(-1.0, 1.0, B).astype(np.float32)
    t, p, Ld, g = upload(lib, t_h, off), upload(lib, p_h, off), upload(lib, L), upload(lib, g_h)
    sums, counts, nf = lib.empty((B,), "float32"), lib.empty((B,), "int32"), lib.empty((), "int64")
    gt_buf, gp_buf = (
        lib.empty((t_h.size + off,), "float32"),
        lib.empty((t_h.size + off,), "float32"),
    )
    gt, gp = gt_buf[off:].reshape(shape), gp_buf[off:].reshape(shape)
    lib.synchronize()
    k.cuda_stop_forward(t, p, Ld, sums, counts, nf, stream=stream_ptr, **STOP_CONFIG)
    k.cuda_stop_backward(t, p, Ld, g, gt, gp, stream=stream_ptr, **STOP_CONFIG)
    lib.synchronize()
    want = k.stop_forward(t_h, p_h, L, **STOP_CONFIG)
    w_t, w_p = k.stop_backward(t_h, p_h, L, g_h, **STOP_CONFIG)
    ok = np.allclose(lib.to_host(sums), want["sums"], rtol=2e-6, atol=1e-5)
    ok &= np.array_equal(lib.to_host(counts), want["counts"])
    ok &= int(lib.to_host(nf)) == int(want["nonfinite_count"])
    ok &= bool(np.allclose(lib.to_host(gt), w_t, rtol=2e-6, atol=1e-6))
    ok &= bool(np.allclose(lib.to_host(gp), w_p, rtol=2e-6, atol=1e-6))
    if not ok:
        print(f"MISMATCH stop loss {shape} offset={off}")
        raise SystemExit(1)


def count_launches(k, lib):
    rng = np.random.default_rng(0)
    s = lib.new_stream()
    ptr = lib.stream_ptr(s)
    B, T, M = 8, 401, 80
    t_h, p_h = make(rng, (B, T, M), "float32"), make(rng, (B, T, M), "float32")
    yt, yp = upload(lib, t_h), upload(lib, p_h)
    L = upload(lib, np.full(B, 300, np.int32))
    state = upload(lib, np.zeros(k.STATE_SIZE))
    loss, ps, nf = lib.empty((), "float32"), lib.empty((B,), "float32"), lib.empty((), "int64")
    ns, w = lib.empty((k.STATE_SIZE,), "float64"), lib.empty((2, B), "float64")
    ws = lib.empty((k.cuda_workspace_size(B, T, M),), "uint8")
    gl, gps = upload(lib, np.asarray(1.0, np.float32)), upload(lib, np.zeros(B, np.float32))
    gt, gp = lib.empty((B, T, M), "float32"), lib.empty((B, T, M), "float32")

    def fwd():
        k.cuda_forward(yt, yp, L, state, loss, ps, nf, ns, w, ws, stream=ptr, check_lengths=False)

    def bwd():
        k.cuda_backward(yt, yp, L, w, gl, gps, gt, gp, stream=ptr, check_lengths=False)

    fwd(), bwd()
    lib.synchronize()
    results = {}
    if lib.name == "torch":
        from torch.profiler import ProfilerActivity, profile

        for name, fn in (("forward", fwd), ("backward", bwd)):
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                lib.synchronize()
            kernels = [
                e
                for e in prof.events()
                if getattr(e, "device_type", None) is not None
                and str(e.device_type).endswith("CUDA")
                and "memset" not in e.name.lower()
                and "memcpy" not in e.name.lower()
            ]
            results[name] = sorted({e.name for e in kernels}), len(kernels)
            print(
                f"torch.profiler {name}: {len(kernels)} kernel launch(es): "
                f"{[e.name[:60] for e in kernels]}"
            )
    sys.path.insert(0, str(ROOT / "tests"))
    from gpu.conftest import capture_node_counts

    for name, fn in (("forward", fwd), ("backward", bwd)):
        counts = capture_node_counts(fn, ptr)
        print(f"graph capture {name}: {counts}")
        results[name + "_graph"] = counts
    ok = (
        results["forward_graph"]["kernel"] == 1
        and results["backward_graph"]["kernel"] == 1
        and results["backward_graph"]["memset"] == 0
        and results["forward_graph"]["memcpy"] == 0
        and results["backward_graph"]["memcpy"] == 0
    )
    for name in ("forward", "backward"):
        if name in results:
            ok &= results[name][1] == 1
    print("launch count: " + ("OK (1 forward, 1 backward)" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count-launches", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="name each case before it runs")
    args = ap.parse_args(argv)
    k = load_kernels()
    lib = load_lib()
    print(f"sanitize_driver: kernels={k.__file__} backend={lib.name}")
    if args.count_launches:
        return count_launches(k, lib)
    rng = np.random.default_rng(1234)
    stream = lib.new_stream()  # kept alive: the launches below use its handle
    ptr = lib.stream_ptr(stream)
    n = 0
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        for i, (shape, kind, off) in enumerate(CASES):
            loss_type = "huber" if i % 2 else "l1"
            norm = "global" if i % 3 == 1 else "per_sample"
            if args.verbose:
                print(f"case {dtype} {shape} {kind} offset={off} {loss_type} {norm}", flush=True)
            run_case(k, lib, rng, dtype, shape, kind, off, loss_type, norm, ptr if i % 2 else 0)
            n += 1
    for i, (shape, off) in enumerate(STOP_CASES):
        if args.verbose:
            print(f"case stop loss {shape} offset={off}", flush=True)
        run_stop_case(k, lib, rng, shape, off, ptr if i % 2 else 0)
        n += 1
    print(f"sanitize_driver: {n} forward+backward cases OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
