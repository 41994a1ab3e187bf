#!/usr/bin/env python3
"""CPU benchmark behind BENCHMARKS.md: the profiler's own measurement, saved.

    python benchmarks/cpu_bench.py                      # quick shape, 50 rounds
    python benchmarks/cpu_bench.py --sweep              # batch x frames sweep
    python benchmarks/cpu_bench.py --out benchmarks/results/cpu --readme-chart

Writes ``<out>.json`` (the profiler's records), ``<out>.md`` (a Markdown table
with the machine it ran on) and ``<out>.png``; ``--readme-chart`` also writes
``docs/images/profile_cpu.png``. It is the same code as ``myxtts-ops profile
--device cpu``, so the numbers are comparable with what users see.
"""

import argparse
import importlib.util
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Use the installed packages; fall back to the source tree only without them.
for name, path in (("myxtts_ops", ROOT), ("myxtts", os.path.join(ROOT, "python"))):
    if importlib.util.find_spec(name) is None:
        sys.path.insert(0, path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from myxtts_ops.tools import report  # noqa: E402
from myxtts_ops.tools.measure import floor_bytes, percentiles_ms  # noqa: E402
from myxtts_ops.tools.profiler import ProfileConfig, ProfilerError, run_profile  # noqa: E402
from myxtts_ops.tools.workloads import IMPLS, MODES  # noqa: E402


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernel_only(batch, frames, mels, repeats, rotate_bytes=96 << 20, seed=0):
    """The same CPU forward kernel without TensorFlow's per-call dispatch: the
    ``myxtts_ops.kernels`` module on NumPy arrays, all cores, inputs rotated as
    in the profiler. Returns {"forward": (median, p20, p80)} and the valid
    fraction of the frames."""
    import time

    import numpy as np

    from myxtts_ops import kernels

    rng = np.random.default_rng(seed)
    tensor_bytes = batch * frames * mels * 4
    n_sets = max(2, min(16, rotate_bytes // (2 * tensor_bytes) + 1))
    lengths = rng.integers(frames // 2, frames + 1, size=batch).astype(np.int32)
    sets = [
        (
            rng.standard_normal((batch, frames, mels), dtype=np.float32),
            rng.standard_normal((batch, frames, mels), dtype=np.float32),
        )
        for _ in range(n_sets)
    ]
    steps = {"forward": lambda t, p: kernels.forward(t, p, lengths)}
    out = {}
    for mode, step in steps.items():
        times = []
        for r in range(repeats + 3):
            t, p = sets[r % n_sets]
            t0 = time.perf_counter()
            step(t, p)
            if r >= 3:
                times.append(time.perf_counter() - t0)
        out[mode] = percentiles_ms(times)
    return out, float(lengths.sum()) / (batch * frames)


def empty_call_ms(batch, frames, mels, repeats):
    """Median time of calling a tf.function that takes the same three inputs
    and does no work: the fixed cost of any loss called as its own step."""
    import time

    import numpy as np
    import tensorflow as tf

    x = tf.zeros([batch, frames, mels])
    lengths = tf.fill([batch], frames)
    fn = tf.function(lambda a, b, c: tf.shape(a)[0] + c[0])
    fn(x, x, lengths)
    times = []
    for _ in range(repeats + 3):
        t0 = time.perf_counter()
        fn(x, x, lengths).numpy()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[3:])) * 1e3


def in_graph_ms(batch, frames, mels, repeats, steps=8, seed=0):
    """Per-step cost of the fused op inside a training-step graph: one
    tf.function runs it on ``steps`` different input sets (so they come from
    memory) and the same function without the op is subtracted, which removes
    the Python-to-TF call cost that a real step pays once whatever its loss.
    Returns {"forward": ms, "forward_backward": ms, "xtts_step": ms}."""
    import time

    import numpy as np
    import tensorflow as tf

    import myxtts_ops

    rng = np.random.default_rng(seed)
    shape = (steps, batch, frames, mels)
    y_true = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    y_pred = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    lengths = tf.constant(rng.integers(frames // 2, frames + 1, size=batch).astype(np.int32))

    def forward(k):
        return myxtts_ops.masked_mel_loss(y_true[k], y_pred[k], lengths).loss

    def forward_backward(k):
        p = y_pred[k]
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = myxtts_ops.masked_mel_loss(y_true[k], p, lengths).loss
        return loss + tape.gradient(loss, p)[0, 0, 0]

    from myxtts.training.losses import XTTSLoss

    xtts = XTTSLoss()

    def xtts_step(k):
        p = y_pred[k]
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = xtts({"mel_target": y_true[k], "mel_lengths": lengths}, {"mel_output": p})
        return loss + tape.gradient(loss, p)[0, 0, 0]

    def baseline(k):
        return y_true[k][0, 0, 0] + y_pred[k][0, 0, 0]

    def graph(step):
        def run():
            total = tf.zeros([])
            for k in range(steps):
                total += step(k)
            return total

        return tf.function(run)

    def median_ms(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn().numpy()
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) * 1e3

    base = median_ms(graph(baseline))
    return {
        mode: (median_ms(graph(step)) - base) / steps
        for mode, step in (
            ("forward", forward),
            ("forward_backward", forward_backward),
            ("xtts_step", xtts_step),
        )
    }


def isolated_table(result, config, repeats):
    """Fused op alone (no interleaving) and the kernels without TF dispatch,
    against the floor of the interleaved run."""
    batch, frames = config.shapes[0] if config.shapes else (config.batch, config.frames)
    mels = config.mels
    alone = run_profile(
        ProfileConfig(
            device="cpu",
            dtype="float32",
            repeats=repeats,
            warmup=config.warmup,
            impls=("fused",),
            modes=("forward", "forward_backward", "xtts_step"),
            shapes=[(batch, frames)],
            mels=mels,
        )
    )
    kern, valid = kernel_only(batch, frames, mels, repeats)
    bw = result.bandwidth["best"] * 1e9
    floor = {
        m: floor_bytes(m, batch, frames, mels, "float32", valid) / bw * 1e3
        for m in ("forward", "forward_backward", "xtts_step")
    }
    rows = [
        ("fused op alone (tf.function)", r.mode, (r.median_ms, r.p20_ms, r.p80_ms))
        for r in alone.records
        if r.impl == "fused"
    ]
    for mode, ms in in_graph_ms(batch, frames, mels, repeats).items():
        rows.append(("fused op in a step graph, per step", mode, (ms, float("nan"), float("nan"))))
    # Forward only: the NumPy backward allocates fresh outputs per call, so it
    # would time page faults, not the kernel.
    rows.append(("kernels, no TF dispatch", "forward", kern["forward"]))
    call = empty_call_ms(batch, frames, mels, repeats)
    lines = [
        f"Isolated runs, [{batch}, {frames}, {mels}] float32 (floor from the run above; "
        f"an empty tf.function call with the same inputs takes {call:.3f} ms):\n",
        "| what | mode | median ms | p20 ms | p80 ms | x floor | x (floor + empty call) |",
        "|---|---|---|---|---|---|---|",
    ]
    for what, mode, (med, p20, p80) in rows:
        with_call = f"{med / (floor[mode] + call):.2f}" if what.startswith("fused") else "-"
        spread = "- | -" if p20 != p20 else f"{p20:.3f} | {p80:.3f}"  # NaN: median only
        with_call = with_call if what.startswith("fused op alone") else "-"
        lines.append(
            f"| {what} | {mode} | {med:.3f} | {spread} | {med / floor[mode]:.2f} | {with_call} |"
        )
    for mode, ms in floor.items():
        lines.append(f"| floor | {mode} | {ms:.3f} | - | - | 1.00 | - |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        default=os.path.join(ROOT, "benchmarks", "results", "cpu"),
        help="output path prefix (default benchmarks/results/cpu)",
    )
    ap.add_argument("--sweep", action="store_true", help="batch 8,16,32,64 x frames 250..2000")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument(
        "--readme-chart", action="store_true", help="also write docs/images/profile_cpu.png"
    )
    args = ap.parse_args(argv)

    config = ProfileConfig(
        device="cpu",
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        impls=tuple(args.impls.split(",")),
        modes=tuple(args.modes.split(",")),
        shapes=(
            [(b, t) for b in (8, 16, 32, 64) for t in (250, 500, 1000, 2000)]
            if args.sweep
            else None
        ),
    )
    try:
        result = run_profile(config)
    except ProfilerError as exc:
        print(f"cpu_bench: error: {exc}", file=sys.stderr)
        return 1
    import tensorflow as tf

    header = (
        f"CPU: {_cpu_name()}, {os.cpu_count()} logical cores; TensorFlow {tf.__version__}; "
        f"streaming bandwidth {result.bandwidth['best']:.1f} GB/s; "
        f"{config.repeats} interleaved rounds; {result.elapsed_s:.0f} s in all.\n\n"
    )
    table = report.format_table(result.records)
    print(table, end="")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    report.write_json(result.records, args.out + ".json")
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(header + report.format_table(result.records, markdown=True))
    if not args.sweep and "fused" in config.impls:
        isolated = isolated_table(result, config, args.repeats)
        print(isolated, end="")
        with open(args.out + ".md", "a", encoding="utf-8") as f:
            f.write("\n" + isolated)
    report.plot(result.records, args.out + ".png")
    print(f"wrote {args.out}.json, {args.out}.md, {args.out}.png")
    if args.readme_chart:
        chart = os.path.join(ROOT, "docs", "images", "profile_cpu.png")
        report.plot(result.records, chart)
        print(f"wrote {chart}")
    for failure in result.failures:
        print(f"cpu_bench: failed: {failure}", file=sys.stderr)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
