"""Soak test of XTTSLoss: many steps with NaN batches, loss spikes and gradient surges.

Runs ``--steps`` XTTSLoss training calls on small random mel batches
(``[--batch, --frames, --mels]``) inside one ``tf.function`` that loops over a
chunk of steps (``--chunk``), with, per step and drawn at random:

* NaN written into a valid frame (``--nan-prob``),
* a 50x loss spike (``--spike-prob``; y_pred moved 50x further from y_true),
* an empty batch (every length 0; ``--empty-prob``),
* a gradient-norm surge (x20, ``--surge-prob``) or a non-finite norm
  (``--nan-norm-prob``) fed to ``observe_gradient_norm``,
* an overflow (``--overflow-prob``): finite inputs whose difference overflows
  float32 (``y_true = -3e38``, ``y_pred = 3e38`` in a valid element), which
  must count as a non-finite step and never enter the running statistics,

and, between chunks, a burst of eager calls from two threads at once
(``--concurrent-calls`` per thread): each call either runs or is refused with
``ConcurrentCallError``, and every counter counts exactly the calls that ran,

and a slowly drifting noise level so that the adaptive weight keeps moving.

After every chunk it checks on the host: every output (returned total) and every
state variable finite, the mel weight always inside its bounds, and the counters
consistent with what was injected (op ``steps == clean + nonfinite + empty``,
``step_count == steps``, loss ``nonfinite_steps == NaN or overflow batches``,
observed + non-finite gradient norms == norms fed, concurrent calls run +
refused == made). Memory: the resident set size
(``VmRSS`` of ``/proc/self/status``) after the first chunk and at the end; the
run fails when it grows by more than ``--max-rss-growth-mb``.

    PYTHONPATH=.:python python3 benchmarks/soak.py --steps 100000

Prints one JSON line with the figures (also ``--json PATH``). Exit status 0 when
every check passed.
"""

import argparse
import json
import os
import sys
import time

import numpy as np


def rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:  # pragma: no cover - non-Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # noqa: BLE001
        return float("nan")


def build(args):
    import tensorflow as tf

    from myxtts_loss import XTTSLoss

    loss_fn = XTTSLoss(implementation=args.implementation)
    c = loss_fn.config
    B, T, M = args.batch, args.frames, args.mels
    lo, hi = float(c.adaptive_weight_min_weight), float(c.adaptive_weight_max_weight)

    def one_step(step, seed):
        s = tf.stack([seed, step])
        u = tf.random.stateless_uniform([7], seed=s)
        level = 1.0 + 0.5 * tf.sin(tf.cast(step, tf.float32) / 400.0)
        nan = u[0] < args.nan_prob
        spike = u[1] < args.spike_prob
        empty = u[2] < args.empty_prob
        surge = u[3] < args.surge_prob
        nan_norm = u[4] < args.nan_norm_prob
        overflow = u[6] < args.overflow_prob
        y_true = tf.random.stateless_normal([B, T, M], seed=s + 1)
        noise = tf.random.stateless_normal([B, T, M], seed=s + 2) * level
        noise = tf.where(spike, noise * 50.0, noise)
        y_pred = y_true + noise
        lengths = tf.random.stateless_uniform(
            [B], seed=s + 3, minval=1, maxval=T + 1, dtype=tf.int32
        )
        lengths = tf.where(empty, tf.zeros_like(lengths), lengths)
        # NaN in frame 0 of sample 0 (always valid unless the batch is empty).
        poison = tf.where(nan, tf.constant(np.nan, tf.float32), y_pred[0, 0, 0])
        y_pred = tf.tensor_scatter_nd_update(y_pred, [[0, 0, 0]], tf.reshape(poison, [1]))
        # Overflow: finite values 3e38 apart in the same (valid) element.
        big = tf.constant(3e38, tf.float32)
        y_true = tf.tensor_scatter_nd_update(
            y_true, [[0, 0, 1]], tf.reshape(tf.where(overflow, -big, y_true[0, 0, 1]), [1])
        )
        y_pred = tf.tensor_scatter_nd_update(
            y_pred, [[0, 0, 1]], tf.reshape(tf.where(overflow, big, y_pred[0, 0, 1]), [1])
        )
        total = loss_fn(
            {"mel_target": y_true, "mel_lengths": lengths},
            {"mel_output": y_pred},
        )
        norm = 1.0 + 0.1 * u[5]
        norm = tf.where(surge, norm * 20.0, norm)
        norm = tf.where(nan_norm, tf.constant(np.nan, tf.float32), norm)
        loss_fn.observe_gradient_norm(norm)
        nan_counted = tf.logical_and(tf.logical_or(nan, overflow), tf.logical_not(empty))
        overflow_counted = tf.logical_and(overflow, tf.logical_not(empty))
        w = loss_fn.current_mel_weight
        return total, w, nan_counted, empty, spike, surge, overflow_counted

    @tf.function(
        input_signature=[
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([], tf.int64),
        ]
    )
    def chunk(start, n, seed):
        bad_total = tf.constant(0, tf.int64)
        out_of_bounds = tf.constant(0, tf.int64)
        nans = tf.constant(0, tf.int64)
        empties = tf.constant(0, tf.int64)
        spikes = tf.constant(0, tf.int64)
        surges = tf.constant(0, tf.int64)
        overflows = tf.constant(0, tf.int64)
        w_min = tf.constant(np.inf, tf.float32)
        w_max = tf.constant(-np.inf, tf.float32)
        for i in tf.range(n):
            total, w, nan, empty, spike, surge, overflow = one_step(start + i, seed)
            w = tf.convert_to_tensor(w)
            bad_total += tf.cast(tf.logical_not(tf.math.is_finite(total)), tf.int64)
            out_of_bounds += tf.cast(
                tf.logical_or(tf.logical_or(w < lo, w > hi), tf.logical_not(tf.math.is_finite(w))),
                tf.int64,
            )
            nans += tf.cast(nan, tf.int64)
            empties += tf.cast(empty, tf.int64)
            spikes += tf.cast(spike, tf.int64)
            surges += tf.cast(surge, tf.int64)
            overflows += tf.cast(overflow, tf.int64)
            w_min = tf.minimum(w_min, w)
            w_max = tf.maximum(w_max, w)
        return dict(
            bad_total=bad_total,
            out_of_bounds=out_of_bounds,
            nans=nans,
            empties=empties,
            spikes=spikes,
            surges=surges,
            overflows=overflows,
            w_min=w_min,
            w_max=w_max,
        )

    return loss_fn, chunk, (lo, hi)


def concurrent_burst(loss_fn, args, seed):
    """Two threads call the loss eagerly at once; returns (calls run, calls refused, errors)."""
    import threading

    import tensorflow as tf

    from myxtts_loss import ConcurrentCallError

    rng = np.random.default_rng(seed)
    B, T, M = args.batch, args.frames, args.mels
    y_true = {
        "mel_target": tf.constant(rng.standard_normal((B, T, M)).astype(np.float32)),
        "mel_lengths": tf.constant(rng.integers(1, T + 1, B).astype(np.int32)),
    }
    y_pred = {"mel_output": y_true["mel_target"] + 1.0}
    ran, refused, errors = [0, 0], [0, 0], []
    barrier = threading.Barrier(2)

    def worker(i):
        barrier.wait()
        for _ in range(args.concurrent_calls):
            try:
                loss_fn(y_true, y_pred)
                ran[i] += 1
            except ConcurrentCallError:
                refused[i] += 1
            except Exception as exc:  # noqa: BLE001 - reported as a failure
                errors.append(f"concurrent call failed: {exc!r}")
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(ran), sum(refused), errors


def check_state(loss_fn, expected, errors, where):
    import myxtts_ops

    for v in loss_fn.state_variables:
        x = v.numpy()
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            errors.append(f"{where}: non-finite value in variable {v.name}: {x}")
    st = {k: float(v) for k, v in myxtts_ops.read_state(loss_fn._state.op_state).items()}
    steps = int(loss_fn.step_count.numpy())
    m = loss_fn.get_stability_metrics()
    a = loss_fn.get_adaptive_weight_metrics()
    checks = {
        "step_count == steps run": (steps, expected["steps"]),
        "op steps == step_count": (int(st["steps"]), steps),
        "op steps == clean + nonfinite + empty": (
            int(st["steps"]),
            int(st["clean_steps"] + st["nonfinite_steps"]) + expected["empties"],
        ),
        "op nonfinite_steps == NaN batches": (int(st["nonfinite_steps"]), expected["nans"]),
        "loss nonfinite_steps == NaN batches": (int(m["nonfinite_steps"]), expected["nans"]),
        "gradient norms observed + non-finite == fed": (
            int(loss_fn._state.gradient_norm_count.numpy())
            + int(loss_fn._state.nonfinite_gradient_norms.numpy()),
            expected["norms"],
        ),
        "op running statistics finite": (bool(np.isfinite(st["running_mean"])), True),
        "non-finite gradient norms <= fed": (
            int(loss_fn._state.nonfinite_gradient_norms.numpy()) <= expected["steps"],
            True,
        ),
        "window_count <= 10": (st["window_count"] <= 10, True),
    }
    for what, (got, want) in checks.items():
        if got != want:
            errors.append(f"{where}: {what}: got {got}, expected {want}")
    w = float(a["current_mel_weight"])
    c = loss_fn.config
    if not (c.adaptive_weight_min_weight <= w <= c.adaptive_weight_max_weight):
        errors.append(f"{where}: weight {w} out of bounds")
    return st, m, a


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--chunk", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--mels", type=int, default=8)
    p.add_argument("--nan-prob", type=float, default=0.02)
    p.add_argument("--spike-prob", type=float, default=0.002)
    p.add_argument("--empty-prob", type=float, default=0.005)
    p.add_argument("--surge-prob", type=float, default=0.005)
    p.add_argument("--nan-norm-prob", type=float, default=0.005)
    p.add_argument("--overflow-prob", type=float, default=0.002)
    p.add_argument(
        "--concurrent-calls",
        type=int,
        default=20,
        help="eager calls per thread in the two-thread burst after each chunk (0: none)",
    )
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--implementation", default="fused", choices=("fused", "reference"))
    p.add_argument("--max-rss-growth-mb", type=float, default=64.0)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    rss_import = rss_mb()
    loss_fn, chunk, _ = build(args)
    errors = []
    expected = dict(
        steps=0,
        nans=0,
        empties=0,
        spikes=0,
        surges=0,
        overflows=0,
        norms=0,
        concurrent_ran=0,
        concurrent_refused=0,
    )
    w_min, w_max = np.inf, -np.inf
    rss_start = None
    rss_peak = 0.0
    t0 = time.perf_counter()
    t_first = None
    done = 0
    while done < args.steps:
        n = min(args.chunk, args.steps - done)
        out = chunk(
            tf.constant(done, tf.int64), tf.constant(n, tf.int64), tf.constant(args.seed, tf.int64)
        )
        out = {k: v.numpy() for k, v in out.items()}
        done += n
        expected["steps"] += n
        expected["norms"] += n
        for k in ("nans", "empties", "spikes", "surges", "overflows"):
            expected[k] += int(out[k])
        if args.concurrent_calls > 0:
            ran, refused, burst_errors = concurrent_burst(loss_fn, args, args.seed + done)
            errors.extend(burst_errors)
            expected["steps"] += ran
            expected["concurrent_ran"] += ran
            expected["concurrent_refused"] += refused
            if ran + refused != 2 * args.concurrent_calls:
                errors.append(
                    f"after step {done}: {ran} + {refused} concurrent calls != "
                    f"{2 * args.concurrent_calls} made"
                )
        if out["bad_total"]:
            errors.append(f"steps <= {done}: {int(out['bad_total'])} non-finite returned totals")
        if out["out_of_bounds"]:
            errors.append(
                f"steps <= {done}: weight out of bounds {int(out['out_of_bounds'])} times"
            )
        w_min, w_max = min(w_min, float(out["w_min"])), max(w_max, float(out["w_max"]))
        st, m, a = check_state(loss_fn, expected, errors, f"after step {done}")
        rss = rss_mb()
        rss_peak = max(rss_peak, rss)
        if rss_start is None:
            rss_start = rss  # after tracing and the first chunk
            t_first = time.perf_counter() - t0
        if not args.quiet and (done // args.chunk) % 10 == 0:
            print(
                f"step {done}: weight {float(a['current_mel_weight']):.4f} changes {int(a['weight_changes'])} "
                f"nonfinite {int(m['nonfinite_steps'])} spikes {int(m['spike_count'])} rss {rss:.1f} MB",
                file=sys.stderr,
                flush=True,
            )
        if errors:
            break
    elapsed = time.perf_counter() - t0
    rss_end = rss_mb()
    growth = rss_end - (rss_start if rss_start is not None else rss_end)
    if growth > args.max_rss_growth_mb:
        errors.append(f"RSS grew by {growth:.1f} MB (> {args.max_rss_growth_mb} MB)")
    a = loss_fn.get_adaptive_weight_metrics()
    m = loss_fn.get_stability_metrics()
    result = dict(
        steps=done,
        loss_calls=expected["steps"],
        shape=[args.batch, args.frames, args.mels],
        implementation=args.implementation,
        seconds=round(elapsed, 2),
        seconds_first_chunk=round(t_first or 0.0, 2),
        steps_per_second=round(done / elapsed, 1) if elapsed > 0 else None,
        rss_after_import_mb=round(rss_import, 1),
        rss_start_mb=round(rss_start or float("nan"), 1),
        rss_end_mb=round(rss_end, 1),
        rss_peak_mb=round(rss_peak, 1),
        rss_growth_mb=round(growth, 1),
        nan_batches=expected["nans"],
        empty_batches=expected["empties"],
        spike_batches=expected["spikes"],
        gradient_surges=expected["surges"],
        overflow_batches=expected["overflows"],
        concurrent_calls_run=expected["concurrent_ran"],
        concurrent_calls_refused=expected["concurrent_refused"],
        loss_nonfinite_steps=int(m["nonfinite_steps"]),
        detected_spikes=int(m["spike_count"]),
        weight_changes=int(a["weight_changes"]),
        rejected_changes=int(a["rejected_changes"]),
        weight_min=w_min,
        weight_max=w_max,
        final_weight=float(a["current_mel_weight"]),
        errors=errors[:20],
        ok=not errors,
    )
    line = json.dumps(result)
    print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
