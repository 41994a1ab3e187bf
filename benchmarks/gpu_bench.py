#!/usr/bin/env python3
"""GPU benchmark of the fused masked mel loss kernels (no TensorFlow needed).

For forward, backward and forward+backward it times:

- ``fused``        myxtts_ops.kernels.cuda_forward / cuda_backward (one launch each)
- ``fused_graph``  the same calls captured once into a CUDA graph and replayed
                   (PyTorch arrays): the kernels back to back, without the
                   Python call's host work between launches, as a compiled
                   step's runtime launches them
- ``torch_eager``  the same math as eager PyTorch ops (autograd for the backward)
- ``jax_jit``      the same math compiled by jax.jit (jax.vjp for the backward)
- ``fused_ffi_jax`` the fused kernels through their CUDA XLA FFI handlers, from jax.jit
- ``floor``        bytes that must move / device-to-device copy bandwidth
                   measured in the same run
- ``empty_kernel`` one empty kernel launch (the launch-overhead floor)

Sizes [8,200,80], [32,1000,80], [256,2000,80] in float32 and bfloat16, lengths
drawn from [T/2, T]. CUDA events around every repetition (JAX runs on its own
streams, so it is timed by wall clock over groups of calls with
block_until_ready), warm-up first, median and p20/p80, several input buffers
rotated so that the working set exceeds L2. Prints one table per mode and
writes ``--json PATH``. ``--quick``: [32,1000,80] float32, fewer repetitions.

Exits 0 with a message when there is no GPU or the kernels are not built.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave memory to the others
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
# The installed package; the source tree only without one (scripts/gpu_check.sh
# builds the kernels module into it).
if importlib.util.find_spec("myxtts_ops") is None:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from myxtts_ops import jax_ffi  # noqa: E402
from myxtts_ops.tools.measure import floor_bytes, percentiles_ms  # noqa: E402

SIZES = [(8, 200, 80), (32, 1000, 80), (256, 2000, 80)]
DTYPES = ["float32", "bfloat16"]
MODES = ["forward", "backward", "forward_backward"]
L2_BYTES = 50 << 20  # H100 / H200: 50 MiB


def skip(msg):
    print(f"gpu_bench: SKIP: {msg}")
    sys.exit(0)


def load_kernels():
    from myxtts_ops import gpu

    reason = gpu.unavailable_reason()
    if reason:
        skip(reason)
    from myxtts_ops import kernels

    return kernels


# ---------------------------------------------------------------------------
def load_dev(name=None):
    """The array backend: PyTorch preferred (it also runs the eager baseline), else CuPy."""
    from myxtts_ops.array_backend import BackendUnavailable, load_backend

    try:
        return load_backend(name, prefer=("torch", "cupy"))
    except BackendUnavailable as e:
        skip(f"no CUDA array library to allocate device arrays: {e}")


def empty_kernel(dev):
    """A launcher of one empty kernel on the current stream: a CuPy RawKernel
    when CuPy is importable, else PyTorch's zero-cycle spin kernel."""
    try:
        import cupy
    except Exception:  # noqa: BLE001
        cupy = None
    if cupy is not None:
        k = cupy.RawKernel(r'extern "C" __global__ void myxtts_noop() {}', "myxtts_noop")
        ptr = dev.stream_ptr()
        stream = cupy.cuda.ExternalStream(ptr) if ptr else cupy.cuda.Stream.null
        return lambda: k((1,), (1,), (), stream=stream)
    return lambda: dev.module.cuda._sleep(0)


def time_events(dev, fn, reps, warmup):
    """Per-repetition device time (ms) from CUDA events on the current stream."""
    for i in range(warmup):
        fn(i)
    dev.synchronize()
    starts = [dev.event() for _ in range(reps)]
    ends = [dev.event() for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        fn(i)
        ends[i].record()
    dev.synchronize()
    return [dev.elapsed_ms(a, b) for a, b in zip(starts, ends)]


def capture_replay(torch, call, n_calls):
    """``call(i, stream_ptr)`` for i in range(n_calls), captured into one CUDA
    graph on a side stream; returns the graph's replay (on the current stream)."""
    side = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
        for i in range(n_calls):
            call(i, side.cuda_stream)
    torch.cuda.synchronize()
    return graph.replay


def time_wall_groups(fn, block, reps, warmup, group=5):
    """Per-call wall time (ms) over groups of ``group`` asynchronous calls."""
    out = None
    for i in range(warmup):
        out = fn(i)
    block(out)
    times = []
    for g in range(max(1, reps // group)):
        t0 = time.perf_counter()
        for j in range(group):
            out = fn(g * group + j)
        block(out)
        times.append((time.perf_counter() - t0) * 1e3 / group)
    return times


def copy_bandwidth(dev, reps):
    """Device-to-device copy bandwidth (bytes/s, read + write) of a 1 GiB buffer."""
    n = (1 << 30) // 4
    a, b = dev.empty((n,), "float32"), dev.empty((n,), "float32")
    ms = time_events(dev, lambda i: dev.copy(b, a), max(reps // 4, 5), 3)
    return 2.0 * n * 4 / (np.median(ms) / 1e3)


# ---------------------------------------------------------------------------
# Same math in PyTorch eager / JAX (loss, per_sample, nonfinite_count, state).
WINDOW = 10


def torch_impl(torch, loss_type="l1", delta=1.0):
    def forward(t, p, lengths, state):
        T = t.shape[1]
        tf, pf = t.float(), p.float()
        finite = torch.isfinite(tf) & torch.isfinite(pf)
        valid = (torch.arange(T, device=t.device)[None, :] < lengths[:, None])[:, :, None]
        use = valid & finite
        d = torch.where(use, pf - tf, torch.zeros((), device=t.device))
        ad = d.abs()
        e = (
            ad
            if loss_type == "l1"
            else torch.where(ad <= delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
        )
        S = e.sum(dim=(1, 2))
        n = use.sum(dim=(1, 2))
        active = n > 0
        per_sample = torch.where(active, S / n.clamp_min(1), torch.zeros_like(S))
        loss = per_sample.sum() / active.sum().clamp_min(1)
        nonfinite = (valid & ~finite).sum()
        new_state = torch_state(
            torch, state, loss.detach().double(), nonfinite, valid.sum() * t.shape[2]
        )
        return loss, per_sample, nonfinite, new_state

    return forward


def torch_state(torch, s, loss, nonfinite, valid_count):
    clean = (nonfinite == 0) & (valid_count > 0)
    k = s[1] + clean.double()
    decay = torch.clamp(k / 1000.0, max=0.99)
    head = s[8].long()
    slot = torch.arange(WINDOW, device=s.device) == head
    ring = torch.where(clean & slot, loss, s[9:])
    filled = torch.where(clean, torch.clamp(s[4] + 1, max=WINDOW), s[4])
    used = (torch.arange(WINDOW, device=s.device) < filled).double()
    mean = (ring * used).sum() / filled.clamp_min(1)
    var = torch.where(
        filled >= 2,
        (((ring - mean) * used) ** 2).sum() / filled.clamp_min(1),
        torch.zeros_like(mean),
    )
    head_s = s[8:9]
    new = torch.cat(
        [
            (s[0] + 1)[None],
            k[None],
            (s[2] + (nonfinite > 0).double())[None],
            torch.where(clean, decay * s[3] + (1 - decay) * loss, s[3])[None],
            filled[None],
            torch.where(clean, mean, s[5])[None],
            torch.where(clean, var, s[6])[None],
            torch.where(clean, loss, s[7])[None],
            torch.where(clean, torch.remainder(head_s + 1, WINDOW), head_s),
            ring,
        ]
    )
    return new


def jax_impl(jax, loss_type="l1", delta=1.0):
    jnp = jax.numpy

    def forward(t, p, lengths, state):
        T = t.shape[1]
        tf, pf = t.astype(jnp.float32), p.astype(jnp.float32)
        finite = jnp.isfinite(tf) & jnp.isfinite(pf)
        valid = (jnp.arange(T)[None, :] < lengths[:, None])[:, :, None]
        use = valid & finite
        d = jnp.where(use, pf - tf, 0.0)
        ad = jnp.abs(d)
        e = (
            ad
            if loss_type == "l1"
            else jnp.where(ad <= delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
        )
        S = e.sum(axis=(1, 2))
        n = use.sum(axis=(1, 2))
        active = n > 0
        per_sample = jnp.where(active, S / jnp.maximum(n, 1), 0.0)
        loss = per_sample.sum() / jnp.maximum(active.sum(), 1)
        nonfinite = (valid & ~finite).sum()
        s = state
        vc = valid.sum() * t.shape[2]
        lossd = jax.lax.stop_gradient(loss).astype(s.dtype)
        clean = (nonfinite == 0) & (vc > 0)
        k = s[1] + clean
        decay = jnp.minimum(k / 1000.0, 0.99)
        slot = jnp.arange(WINDOW) == s[8].astype(jnp.int32)
        ring = jnp.where(clean & slot, lossd, s[9:])
        filled = jnp.where(clean, jnp.minimum(s[4] + 1, WINDOW), s[4])
        used = jnp.arange(WINDOW) < filled
        mean = jnp.where(used, ring, 0).sum() / jnp.maximum(filled, 1)
        var = jnp.where(
            filled >= 2, jnp.where(used, (ring - mean) ** 2, 0).sum() / jnp.maximum(filled, 1), 0.0
        )
        head = jnp.where(clean, jnp.mod(s[8] + 1, WINDOW), s[8])
        new_state = jnp.concatenate(
            [
                jnp.stack(
                    [
                        s[0] + 1,
                        k,
                        s[2] + (nonfinite > 0),
                        jnp.where(clean, decay * s[3] + (1 - decay) * lossd, s[3]),
                        filled,
                        jnp.where(clean, mean, s[5]),
                        jnp.where(clean, var, s[6]),
                        jnp.where(clean, lossd, s[7]),
                        head,
                    ]
                ).astype(s.dtype),
                ring,
            ]
        )
        return loss, (per_sample, nonfinite, new_state)

    return forward


# ---------------------------------------------------------------------------
def bench_size(k, dev, jax, size, dtype, reps, warmup, bw, device_name, records, notes):
    def kv(x):  # what the kernels take (bfloat16 PyTorch tensors as int16 views)
        return dev.kernel_view(x)[0]

    B, T, M = size
    isz = 2 if dtype == "bfloat16" else 4
    set_bytes = 2 * B * T * M * isz
    n_sets = int(min(32, max(2, math.ceil(4 * L2_BYTES / set_bytes))))
    rng = np.random.default_rng(0)
    host_sets, sets = [], []
    for _ in range(n_sets):
        lengths = rng.integers(T // 2, T + 1, size=B).astype(np.int32)
        t = rng.standard_normal((B, T, M)).astype(np.float32)
        p = (t + 0.5 * rng.standard_normal((B, T, M))).astype(np.float32)
        if dtype == "bfloat16":
            conv = lambda x: (
                (
                    x.view(np.uint32).astype(np.uint64)
                    + 0x7FFF  # noqa: E731
                    + ((x.view(np.uint32) >> 16) & 1)
                )
                >> 16
            ).astype(np.uint16)
            t, p = conv(t), conv(p)
        host_sets.append((t, p, lengths))
        sets.append((dev.asarray(t, dtype), dev.asarray(p, dtype), dev.asarray(lengths)))
    valid = int(np.mean([h[2].sum() for h in host_sets])) * M
    total = B * T * M
    od = "float32"
    state = dev.asarray(np.zeros(k.STATE_SIZE))
    outs = dict(
        loss=dev.empty((), od),
        per_sample=dev.empty((B,), od),
        nonfinite=dev.empty((), "int64"),
        new_state=dev.empty((k.STATE_SIZE,), "float64"),
        weights=[dev.empty((2, B), "float64") for _ in range(n_sets)],
        workspace=dev.empty((k.cuda_workspace_size(B, T, M),), "uint8"),
        g_true=dev.empty((B, T, M), dtype),
        g_pred=dev.empty((B, T, M), dtype),
        g_loss=dev.asarray(np.asarray(1.0, np.float32)),
        g_ps=dev.asarray(np.zeros(B, np.float32)),
    )
    stream = dev.stream_ptr()
    bf = "bfloat16" if dtype == "bfloat16" else None

    def fused_fwd(i, strm=stream):
        t, p, L = sets[i % n_sets]
        k.cuda_forward(
            kv(t),
            kv(p),
            L,
            state,
            outs["loss"],
            outs["per_sample"],
            outs["nonfinite"],
            outs["new_state"],
            outs["weights"][i % n_sets],
            outs["workspace"],
            stream=strm,
            dtype=bf,
            check_lengths=False,
        )

    def fused_bwd(i, strm=stream):
        t, p, L = sets[i % n_sets]
        k.cuda_backward(
            kv(t),
            kv(p),
            L,
            outs["weights"][i % n_sets],
            outs["g_loss"],
            outs["g_ps"],
            kv(outs["g_true"]),
            kv(outs["g_pred"]),
            stream=strm,
            dtype=bf,
            check_lengths=False,
        )

    for i in range(n_sets):
        fused_fwd(i)  # sample weights of every set for the backward-only timing
    dev.synchronize()
    impls = {
        "fused": {
            "forward": fused_fwd,
            "backward": fused_bwd,
            "forward_backward": lambda i, strm=stream: (fused_fwd(i, strm), fused_bwd(i, strm)),
        }
    }

    # One graph per mode holding a call on every input set, replayed as one unit.
    graph_replays = {}
    if dev.name == "torch":
        for mode, call in impls["fused"].items():
            try:
                graph_replays[mode] = capture_replay(dev.module, call, n_sets)
            except Exception as e:  # noqa: BLE001 - a capture failure is reported, not fatal
                notes.append(f"fused_graph {mode} {size} {dtype}: {type(e).__name__}: {e}")

    if dev.name == "torch":
        torch = dev.module
        tfwd = torch_impl(torch)
        tstate = torch.zeros(k.STATE_SIZE, dtype=torch.float64, device="cuda")
        leaf = [
            (t.detach().clone().requires_grad_(True), p.detach().clone().requires_grad_(True), L)
            for t, p, L in sets
        ]

        def torch_fwd(i):
            t, p, L = sets[i % n_sets]
            with torch.no_grad():
                return tfwd(t, p, L, tstate)

        def torch_fb(i):
            t, p, L = leaf[i % n_sets]
            loss = tfwd(t, p, L, tstate)[0]
            return torch.autograd.grad(loss, [t, p])

        graphs = [None] * n_sets

        def torch_bwd(i):
            j = i % n_sets
            if graphs[j] is None:
                t, p, L = leaf[j]
                graphs[j] = tfwd(t, p, L, tstate)[0]
            t, p, _ = leaf[j]
            return torch.autograd.grad(graphs[j], [t, p], retain_graph=True)

        impls["torch_eager"] = {
            "forward": torch_fwd,
            "backward": torch_bwd,
            "forward_backward": torch_fb,
        }

    jax_impls = {}
    if jax is not None:
        jnp = jax.numpy
        jdt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
        jsets = []
        for t, p, L in host_sets:
            if dtype == "bfloat16":  # uint16 bits -> ml_dtypes bfloat16 (host view)
                import ml_dtypes  # a JAX dependency

                jt = jax.device_put(t.view(ml_dtypes.bfloat16))
                jp = jax.device_put(p.view(ml_dtypes.bfloat16))
            else:
                jt, jp = jax.device_put(t), jax.device_put(p)
            jsets.append((jt.astype(jdt), jp.astype(jdt), jax.device_put(L)))
        jstate = jax.device_put(np.zeros(k.STATE_SIZE, np.float32))
        jf = jax_impl(jax)
        j_fwd = jax.jit(jf)
        j_fb = jax.jit(
            lambda t, p, L, s: jax.grad(lambda a, b: jf(a, b, L, s)[0], argnums=(0, 1))(t, p)
        )
        vjps = []
        for jt, jp, L in jsets:
            _, vjp_fn = jax.vjp(lambda a, b, L=L: jf(a, b, L, jstate)[0], jt, jp)
            vjps.append(vjp_fn)
        j_bwd = jax.jit(lambda fn, g: fn(g))
        one = jnp.float32(1.0)
        jax_impls = {
            "jax_jit": {
                "forward": lambda i: j_fwd(*jsets[i % n_sets], jstate),
                "backward": lambda i: j_bwd(vjps[i % n_sets], one),
                "forward_backward": lambda i: j_fb(*jsets[i % n_sets], jstate),
            }
        }
        # The fused kernels through the CUDA FFI handlers (what the TF op runs
        # under XLA:GPU), called from jax.jit: the custom call's own overhead.
        try:
            jax_ffi.register("CUDA")
            fstate = jax.device_put(np.zeros(k.STATE_SIZE, np.float64))
            f_fwd = jax.jit(jax_ffi.forward)

            def ffi_fb(t, p, L, s):
                out = jax_ffi.forward(t, p, L, s)
                return jax_ffi.backward(
                    t, p, L, out[4], jnp.ones((), out[0].dtype), jnp.zeros_like(out[1])
                )

            f_fb = jax.jit(ffi_fb)
            f_bwd = jax.jit(jax_ffi.backward)
            fwd_outs = [f_fwd(jt, jp, L, fstate) for jt, jp, L in jsets]
            # The incoming gradients made once: built per call they would add
            # two eager JAX dispatches to every timed backward.
            g_loss = jnp.ones((), fwd_outs[0][0].dtype)
            g_per_sample = jnp.zeros_like(fwd_outs[0][1])
            jax_impls["fused_ffi_jax"] = {
                "forward": lambda i: f_fwd(*jsets[i % n_sets], fstate),
                "backward": lambda i: f_bwd(
                    *jsets[i % n_sets], fwd_outs[i % n_sets][4], g_loss, g_per_sample
                ),
                "forward_backward": lambda i: f_fb(*jsets[i % n_sets], fstate),
            }
        except Exception as e:  # noqa: BLE001 - a build without the CUDA FFI handlers
            notes.append(f"fused_ffi_jax {size} {dtype}: {type(e).__name__}: {e}")

    # Every buffer once in the warm-up (lazy autograd graphs, JAX retraces).
    warmup = max(warmup, n_sets + 2)
    noop = empty_kernel(dev)
    empty_ms = time_events(dev, lambda i: noop(), reps, warmup)
    for mode in MODES:
        # The kernels write both gradients (d/dy_true and d/dy_pred).
        fbytes = floor_bytes(mode, B, T, M, dtype, valid / total, gradients=2)
        base = dict(mode=mode, batch=B, frames=T, mels=M, dtype=dtype, device=device_name)

        def add(impl, times, method):
            med, p20, p80 = percentiles_ms([t / 1e3 for t in times])
            records.append(
                dict(
                    base,
                    impl=impl,
                    median_ms=med,
                    p20_ms=p20,
                    p80_ms=p80,
                    gbps=fbytes / (med / 1e3) / 1e9,
                    method=method,
                    reps=len(times),
                    buffers=n_sets,
                )
            )

        for name, fns in impls.items():
            try:
                add(name, time_events(dev, fns[mode], reps, warmup), "cuda_events")
            except Exception as e:  # noqa: BLE001 - e.g. out of memory on the largest size
                notes.append(f"{name} {mode} {size} {dtype}: {type(e).__name__}: {e}")
        if mode in graph_replays:
            replay = graph_replays[mode]
            times = time_events(dev, lambda i: replay(), reps, warmup)
            add("fused_graph", [t / n_sets for t in times], f"cuda_graph_replay/{n_sets}")
        for name, fns in jax_impls.items():
            try:
                block = lambda out: jax.block_until_ready(out)  # noqa: E731
                add(
                    name,
                    time_wall_groups(fns[mode], block, reps, warmup),
                    "wall_per_call_over_groups",
                )
            except Exception as e:  # noqa: BLE001
                notes.append(f"{name} {mode} {size} {dtype}: {type(e).__name__}: {e}")
        floor_ms = fbytes / bw * 1e3
        records.append(
            dict(
                base,
                impl="floor",
                median_ms=floor_ms,
                p20_ms=floor_ms,
                p80_ms=floor_ms,
                gbps=bw / 1e9,
                method="bytes/copy_bandwidth",
                reps=0,
                buffers=n_sets,
            )
        )
        n_launch = 2 if mode == "forward_backward" else 1
        e_ms = [x * n_launch for x in empty_ms]
        add("empty_kernel", e_ms, f"cuda_events x{n_launch}")
    # Drop the device buffers (the timing closures hold these cells) before emptying the cache.
    sets = outs = impls = jax_impls = leaf = graphs = graph_replays = None  # noqa: F841
    dev.synchronize()
    if dev.name == "torch":
        dev.module.cuda.empty_cache()


def print_tables(records, out=sys.stdout):
    for mode in MODES:
        rows = [r for r in records if r["mode"] == mode]
        if not rows:
            continue
        print(f"\n== {mode} ==", file=out)
        hdr = (
            f"{'size':>14} {'dtype':>9} {'impl':>13} {'median ms':>10} {'p20 ms':>9} "
            f"{'p80 ms':>9} {'GB/s':>8} {'vs fused':>9} {'of floor':>9}"
        )
        print(hdr, file=out)
        print("-" * len(hdr), file=out)
        keys = []
        for r in rows:
            key = (r["batch"], r["frames"], r["mels"], r["dtype"])
            if key not in keys:
                keys.append(key)
        for key in keys:
            group = [r for r in rows if (r["batch"], r["frames"], r["mels"], r["dtype"]) == key]
            fused = next((r["median_ms"] for r in group if r["impl"] == "fused"), None)
            floor = next((r["median_ms"] for r in group if r["impl"] == "floor"), None)
            for r in group:
                size = "x".join(map(str, key[:3]))
                rel = f"{r['median_ms'] / fused:8.2f}x" if fused else "-"
                frac = (
                    f"{floor / r['median_ms'] * 100:8.1f}%"
                    if floor and r["impl"] != "floor"
                    else "-"
                )
                print(
                    f"{size:>14} {key[3]:>9} {r['impl']:>13} {r['median_ms']:10.4f} "
                    f"{r['p20_ms']:9.4f} {r['p80_ms']:9.4f} {r['gbps']:8.1f} {rel:>9} "
                    f"{frac:>9}",
                    file=out,
                )


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fused mel loss CUDA kernels vs eager / XLA")
    ap.add_argument("--json", metavar="PATH", help="write the records as JSON")
    ap.add_argument("--quick", action="store_true", help="one size, float32, few repetitions")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-jax", action="store_true")
    ap.add_argument("--no-torch", action="store_true", help="time the fused kernels with CuPy")
    args = ap.parse_args(argv)

    k = load_kernels()
    dev = load_dev("cupy" if args.no_torch else None)
    jax = None
    notes = []
    if not args.no_jax:
        try:
            # 64-bit types on for every JAX row (the FFI handlers need them).
            _jax = jax_ffi.jax_module()

            if any(d.platform == "gpu" for d in _jax.devices()):
                jax = _jax
            else:
                notes.append("JAX sees no GPU: jax_jit skipped")
        except Exception as e:  # noqa: BLE001
            notes.append(f"JAX unavailable ({type(e).__name__}: {e}): jax_jit skipped")
    if dev.name != "torch":
        notes.append("PyTorch unavailable: torch_eager skipped")
    sizes = [(32, 1000, 80)] if args.quick else SIZES
    dtypes = ["float32"] if args.quick else DTYPES
    reps = args.reps or (30 if args.quick else 100)
    device_name = dev.device_name()
    print(
        f"gpu_bench: device={device_name} arrays={dev.name} jax={'yes' if jax else 'no'} "
        f"reps={reps} warmup={args.warmup}"
    )
    bw = copy_bandwidth(dev, reps)
    print(f"device-to-device copy bandwidth: {bw / 1e9:.1f} GB/s (read + write)")
    records = []
    for size in sizes:
        for dtype in dtypes:
            print(f"... {size} {dtype}", flush=True)
            bench_size(k, dev, jax, size, dtype, reps, args.warmup, bw, device_name, records, notes)
    print_tables(records)
    for n in notes:
        print(f"note: {n}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": device_name,
                    "copy_bandwidth_gbps": bw / 1e9,
                    "records": records,
                    "notes": notes,
                },
                f,
                indent=1,
            )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
