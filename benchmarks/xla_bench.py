#!/usr/bin/env python3
"""The fused op inside XLA: benchmark behind BENCHMARKS.md's XLA section.

    python benchmarks/xla_bench.py                       # batch 32, frames 1000, 80 mels
    python benchmarks/xla_bench.py --repeats 100 --out benchmarks/results/xla

Measures, in one interleaved run (the profiler's method: every round runs
every item once on a rotating input copy, lengths in [T/2, T], float32):

* ``fused_xla``  -- the fused op inside ``tf.function(jit_compile=True)`` (one
  typed-FFI custom call forward, one backward);
* ``xla``        -- the pure-TF reference inside ``jit_compile=True`` (what ran
  under XLA before the custom calls);
* ``fused``      -- the fused op in a plain ``tf.function``;

for the forward, forward+backward and a whole XTTSLoss step, and prints
medians, p20/p80 and the ratios reference-under-XLA / fused-under-XLA and
fused-under-XLA / fused-outside-XLA.
"""

import argparse
import importlib.util
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for name, path in (("myxtts_ops", ROOT), ("myxtts", os.path.join(ROOT, "python"))):
    if importlib.util.find_spec(name) is None:
        sys.path.insert(0, path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from myxtts_ops.tools import workloads  # noqa: E402
from myxtts_ops.tools.measure import percentiles_ms  # noqa: E402

MODES = ("forward", "forward_backward", "xtts_step")
IMPLS = ("fused_xla", "xla", "fused")


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(batch, frames, mels, repeats, warmup):
    import tensorflow as tf

    n_sets = workloads.input_sets_for(batch, frames, mels, "float32", 96 << 20)
    arg_sets = [
        workloads.make_batch(batch, frames, mels, "float32", seed=0, data_seed=k)
        for k in range(n_sets)
    ]
    items = []
    for mode in MODES:
        for impl in IMPLS:
            fn = workloads.build_step(impl, mode)  # the profiler's steps
            fn(*arg_sets[0])  # compiles outside the timings
            if impl == "fused_xla":
                hlo = fn.experimental_get_compiler_ir(*arg_sets[0])(stage="optimized_hlo")
                calls = hlo.count('custom_call_target="myxtts_ops_masked_mel_loss')
                assert calls == (1 if mode == "forward" else 2), f"{mode}: {calls} custom calls"
            items.append((impl, mode, fn, []))
    for _, _, fn, _ in items:
        for _ in range(warmup):
            fn(*arg_sets[0])
    n = len(items)
    for r in range(repeats):
        args = arg_sets[r % n_sets]
        for k in range(n):
            impl, mode, fn, times = items[(r + k) % n]
            t0 = time.perf_counter()
            fn(*args)  # on the CPU the call returns once the work is done
            times.append(time.perf_counter() - t0)
    stats = {(impl, mode): percentiles_ms(times) for impl, mode, _, times in items}
    return stats, n_sets, tf.__version__


def table(stats):
    lines = ["| mode | impl | median ms | p20 ms | p80 ms |", "|---|---|---|---|---|"]
    for mode in MODES:
        for impl in IMPLS:
            med, p20, p80 = stats[(impl, mode)]
            lines.append(f"| {mode} | {impl} | {med:.3f} | {p20:.3f} | {p80:.3f} |")
    lines += [
        "",
        "| mode | reference under XLA / fused under XLA | fused under XLA / fused outside XLA |",
        "|---|---|---|",
    ]
    for mode in MODES:
        fx, x, f = (stats[(i, mode)][0] for i in IMPLS)
        lines.append(f"| {mode} | {x / fx:.2f}x | {fx / f:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--mels", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write <out>.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    stats, n_sets, tf_version = run(args.batch, args.frames, args.mels, args.repeats, args.warmup)
    header = (
        f"CPU: {_cpu_name()}, {os.cpu_count()} logical cores; TensorFlow {tf_version}; "
        f"[{args.batch}, {args.frames}, {args.mels}] float32, lengths in "
        f"[{args.frames // 2}, {args.frames}]; {args.repeats} interleaved rounds over "
        f"{n_sets} input copies; {time.perf_counter() - t0:.0f} s in all; 1-minute load "
        f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.\n\n"
    )
    text = header + table(stats)
    print(text, end="")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".md", "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
