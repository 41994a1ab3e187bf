"""How the profiler times: streaming bandwidth, the interleaved loop, tracing."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from .tf_import import import_tensorflow


def sync(device_kind: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU, where eager calls
    of a tf.function return once the work is done)."""
    if device_kind == "gpu":
        import_tensorflow().test.experimental.sync_devices()


def measure_bandwidth(
    device_kind: str, tf_device: str, nbytes: int, repeats: int = 10
) -> dict[str, float]:
    """Best streaming bandwidth (GB/s, 1e9 bytes/s) over a few simple kernels.

    CPU: NumPy ``sum`` and ``copyto`` and a TF ``reduce_sum`` over a large
    buffer. GPU: a TF ``reduce_sum`` (one read) and a device copy (``-x``, one
    read and one write). Returns every method's best and the overall best.
    """
    tf = import_tensorflow()
    n = max(nbytes // 4, 1 << 16)
    results: dict[str, float] = {}

    def best(fn, moved):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return moved / min(times) / 1e9

    if device_kind == "cpu":
        a = np.ones(n, dtype=np.float32)
        b = np.empty_like(a)
        a.sum()  # touch the pages before timing
        np.copyto(b, a)
        results["numpy_sum"] = best(lambda: a.sum(), a.nbytes)
        results["numpy_copy"] = best(lambda: np.copyto(b, a), 2 * a.nbytes)
        del b
        with tf.device(tf_device):
            x = tf.constant(a)
            reduce = tf.function(lambda v: tf.reduce_sum(v))
            reduce(x)
            results["tf_reduce_sum"] = best(lambda: reduce(x), a.nbytes)
        del a, x
    else:
        with tf.device(tf_device):
            x = tf.ones([n], tf.float32)
            reduce = tf.function(lambda v: tf.reduce_sum(v))
            copy = tf.function(lambda v: -v)
            reduce(x)
            copy(x)
            sync(device_kind)

            def run_reduce():
                reduce(x)
                sync(device_kind)

            def run_copy():
                copy(x)
                sync(device_kind)

            results["tf_reduce_sum"] = best(run_reduce, 4 * n)
            results["device_copy"] = best(run_copy, 8 * n)
        del x
    results["best"] = max(results.values())
    return results


@dataclasses.dataclass
class TimedStep:
    """One (impl, mode) step being timed, and its per-call durations (s)."""

    impl: str
    mode: str
    fn: Callable
    times: list[float] = dataclasses.field(default_factory=list)


def run_interleaved(
    steps: list[TimedStep], arg_sets: Sequence[tuple], repeats: int, warmup: int, device_kind: str
) -> None:
    """Time every step ``repeats`` times, interleaved round by round.

    Every round runs every step once, the starting step rotating, so machine
    noise hits all of them alike; round r uses input copy ``r % len(arg_sets)``
    for every step. ``warmup`` untimed calls of each step come first.
    """
    for step in steps:
        for _ in range(warmup):
            step.fn(*arg_sets[0])
            sync(device_kind)
    n = len(steps)
    for r in range(repeats):
        args = arg_sets[r % len(arg_sets)]
        for k in range(n):
            step = steps[(r + k) % n]
            sync(device_kind)
            t0 = time.perf_counter()
            out = step.fn(*args)
            sync(device_kind)
            step.times.append(time.perf_counter() - t0)
            del out


def trace_steps(
    steps: list[TimedStep],
    args: tuple,
    device_kind: str,
    tf_device: str,
    trace_dir: str,
    calls: int,
) -> None:
    """Write a TensorBoard profiler trace of ``calls`` calls of every step."""
    tf = import_tensorflow()
    os.makedirs(trace_dir, exist_ok=True)
    tf.profiler.experimental.start(trace_dir)
    try:
        with tf.device(tf_device):
            step_num = 0
            for step in steps:
                for _ in range(calls):
                    with tf.profiler.experimental.Trace(
                        f"{step.impl}/{step.mode}", step_num=step_num, _r=1
                    ):
                        step.fn(*args)
                        sync(device_kind)
                    step_num += 1
    finally:
        tf.profiler.experimental.stop()
