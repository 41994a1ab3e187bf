"""Measure what the masked mel loss costs in a training step.

Compares, on synthetic mel batches generated in process:

* ``fused``     -- :func:`myxtts_ops.masked_mel_loss` inside ``tf.function``;
* ``reference`` -- :func:`myxtts_ops.reference.masked_mel_loss` inside ``tf.function``;
* ``xla``       -- the reference inside ``tf.function(jit_compile=True)``;

in three modes:

* ``forward``          -- the loss and its outputs;
* ``forward_backward`` -- the loss plus its gradient with respect to ``y_pred``
  (taken with a ``GradientTape`` inside the ``tf.function``; the gradient is
  returned, so nothing is pruned);
* ``xtts_step``        -- a full :class:`myxtts.training.losses.XTTSLoss` call
  (adaptive-weight decision included) plus its gradient.

For every shape and mode a ``floor`` record is added as well: the bytes the
mode must move at least (forward: ``y_true`` and ``y_pred`` read once;
backward: two more reads and two writes of a ``[B, T, M]`` tensor) divided by
the streaming memory bandwidth measured in the same run.

Implementations are interleaved round by round, so machine noise hits all of
them alike. TensorFlow is imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

IMPLS = ("fused", "reference", "xla")
MODES = ("forward", "forward_backward", "xtts_step")
DTYPES = ("float32", "float16", "bfloat16", "float64")
DEVICES = ("auto", "cpu", "gpu")

#: Fields every JSON record has, in this order (extra fields follow them).
RECORD_FIELDS = (
    "impl", "mode", "batch", "frames", "mels", "dtype", "device",
    "median_ms", "p20_ms", "p80_ms", "gbps",
)

DTYPE_SIZES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

#: What each mode must move at least, in ``[B, T, M]`` tensor passes:
#: (passes over the valid frames only, passes over the whole tensor).
#: forward reads y_true and y_pred where frames are valid; the backward reads
#: them again and writes the gradient of y_pred over the whole tensor (padding
#: gets zeros). xtts_step is dominated by the mel term: same as forward_backward.
MODE_TENSOR_PASSES = {
    "forward": (2, 0),
    "forward_backward": (4, 1),
    "xtts_step": (4, 1),
}

DEFAULT_SWEEP_BATCHES = (8, 16, 32, 64)
DEFAULT_SWEEP_FRAMES = (250, 500, 1000, 2000)

#: Graph op types not counted as work in ``ops_per_step``.
NON_WORK_OPS = frozenset(
    {"Placeholder", "Const", "NoOp", "Identity", "IdentityN",
     "PartitionedCall", "StatefulPartitionedCall", "_Arg", "_Retval"}
)


class ProfilerError(RuntimeError):
    """An error meant for the user: the CLI prints the message, no traceback."""


@dataclasses.dataclass
class ProfileConfig:
    batch: int = 32
    frames: int = 1000
    mels: int = 80
    dtype: str = "float32"
    device: str = "auto"
    repeats: int = 50
    warmup: int = 5
    impls: Tuple[str, ...] = IMPLS
    modes: Tuple[str, ...] = MODES
    #: (batch, frames) pairs to measure; ``None`` means ``[(batch, frames)]``.
    shapes: Optional[List[Tuple[int, int]]] = None
    trace_dir: Optional[str] = None
    trace_steps: int = 3
    seed: int = 0
    #: Size of the buffer used to measure streaming bandwidth (MiB);
    #: ``None`` picks 256 MiB on the CPU and 1 GiB on a GPU.
    bandwidth_mib: Optional[int] = None
    #: Inputs are rotated over enough copies that their total (y_true + y_pred)
    #: reaches this many MiB, so small shapes are not timed out of the cache
    #: while the floor comes from DRAM. ``None``: 96 MiB CPU, 256 MiB GPU.
    rotate_mib: Optional[int] = None

    def shape_list(self) -> List[Tuple[int, int]]:
        return list(self.shapes) if self.shapes else [(self.batch, self.frames)]

    def validate(self) -> None:
        for name in ("batch", "frames", "mels", "repeats"):
            if getattr(self, name) < 1:
                raise ProfilerError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ProfilerError(f"warmup must be >= 0, got {self.warmup}")
        if self.dtype not in DTYPES:
            raise ProfilerError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if self.device not in DEVICES:
            raise ProfilerError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        for impl in self.impls:
            if impl not in IMPLS:
                raise ProfilerError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
        for mode in self.modes:
            if mode not in MODES:
                raise ProfilerError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if not self.impls or not self.modes:
            raise ProfilerError("nothing to measure: empty --impls or --modes")


# --------------------------------------------------------------------------
# Helpers that do not need TensorFlow


def floor_bytes(mode: str, batch: int, frames: int, mels: int, dtype: str,
                valid_fraction: float = 1.0) -> int:
    """Bytes ``mode`` must move at least for one ``[batch, frames, mels]`` step
    whose lengths cover ``valid_fraction`` of the frames."""
    valid_passes, full_passes = MODE_TENSOR_PASSES[mode]
    tensor_bytes = batch * frames * mels * DTYPE_SIZES[dtype]
    return int(round((valid_passes * valid_fraction + full_passes) * tensor_bytes))


def input_sets_for(batch: int, frames: int, mels: int, dtype: str, rotate_bytes: int,
                   max_sets: int = 16) -> int:
    """How many input copies make y_true + y_pred total at least ``rotate_bytes``."""
    per_set = max(2 * batch * frames * mels * DTYPE_SIZES[dtype], 1)
    return int(min(max(-(-rotate_bytes // per_set), 1), max_sets))


def percentiles_ms(times_s: Sequence[float]) -> Tuple[float, float, float]:
    """(median, p20, p80) in milliseconds of a list of durations in seconds."""
    arr = np.asarray(times_s, dtype=np.float64) * 1e3
    p20, p50, p80 = np.percentile(arr, [20.0, 50.0, 80.0])
    return float(p50), float(p20), float(p80)


class Progress:
    """A dependency-free progress bar on stderr (one line per update off a TTY)."""

    def __init__(self, total: int, label: str = "", stream=None, width: int = 30):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int = 1, note: str = "") -> None:
        self.done = min(self.done + n, self.total)
        filled = int(round(self.width * self.done / self.total))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        line = (f"{self.label}[{bar}] {self.done}/{self.total} "
                f"{elapsed:5.1f}s elapsed, ~{eta:5.1f}s left {note}")
        if self._tty:
            self.stream.write("\r" + line.ljust(100))
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line.rstrip() + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------
# TensorFlow parts


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def resolve_device(device: str) -> Tuple[str, str]:
    """("cpu"|"gpu", TF device string) for ``auto``/``cpu``/``gpu``."""
    tf = _tf()
    gpus = tf.config.list_physical_devices("GPU")
    if device == "auto":
        device = "gpu" if gpus else "cpu"
    if device == "gpu":
        if not gpus:
            raise ProfilerError("--device gpu: TensorFlow sees no GPU (use --device cpu or auto)")
        return "gpu", "/GPU:0"
    return "cpu", "/CPU:0"


def check_fused_available() -> None:
    """Load the fused op library; a :class:`ProfilerError` with the loader's message if it fails."""
    try:
        import myxtts_ops

        loader = getattr(myxtts_ops, "load_ops", None)
        if loader is not None:
            loader()
        if not hasattr(myxtts_ops, "masked_mel_loss"):
            raise ImportError("myxtts_ops.masked_mel_loss is not available in this installation")
    except Exception as exc:  # the loader's own message is the actionable part
        msg = str(exc) or exc.__class__.__name__
        raise ProfilerError(
            f"the fused op library could not be loaded: {msg}\n"
            "(to profile without it: --impls reference,xla)"
        ) from None


def check_xtts_available() -> None:
    try:
        from myxtts.training.losses import XTTSLoss  # noqa: F401
    except Exception as exc:
        msg = str(exc) or exc.__class__.__name__
        raise ProfilerError(
            f"mode xtts_step needs myxtts.training.losses.XTTSLoss, which failed to import: {msg}\n"
            "(to profile without it: --modes forward,forward_backward)"
        ) from None


def make_batch(batch: int, frames: int, mels: int, dtype: str, seed: int = 0,
               data_seed: Optional[int] = None):
    """Synthetic log-mel-like ``(y_true, y_pred, lengths)``, lengths in [T/2, T].

    ``seed`` draws the lengths, ``data_seed`` (default: ``seed``) the mels.
    """
    tf = _tf()
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(frames // 2, 1), frames + 1, size=(batch,), dtype=np.int64)
    lengths = lengths.astype(np.int32)
    if data_seed is not None:
        rng = np.random.default_rng([seed, data_seed])
    y_true = (rng.standard_normal((batch, frames, mels), dtype=np.float32) * 2.0 - 4.0)
    y_pred = y_true + rng.standard_normal((batch, frames, mels), dtype=np.float32) * 0.5
    tf_dtype = tf.as_dtype(dtype)
    # tf.identity runs on the device in scope, so the mels end up there (a
    # same-dtype cast may hand back the host tensor, which every call would copy).
    yt = tf.identity(tf.cast(tf.constant(y_true), tf_dtype))
    yp = tf.identity(tf.cast(tf.constant(y_pred), tf_dtype))
    ln = tf.constant(lengths)
    return yt, yp, ln


def _mel_loss(impl: str) -> Callable:
    if impl == "fused":
        import myxtts_ops

        return myxtts_ops.masked_mel_loss
    from myxtts_ops import reference

    return reference.masked_mel_loss


def _make_xtts_loss(impl: str):
    from myxtts.training.losses import XTTSLoss

    return XTTSLoss(implementation="fused" if impl == "fused" else "reference")


def build_step(impl: str, mode: str):
    """A ``tf.function`` running one step of ``mode`` with ``impl``.

    Its arguments are ``(y_true, y_pred, lengths)``; every output is returned so
    that no part of the computation is pruned.
    """
    tf = _tf()
    jit = impl == "xla"

    if mode == "forward":
        loss_fn = _mel_loss(impl)

        def step(y_true, y_pred, lengths):
            out = loss_fn(y_true, y_pred, lengths)
            return out.loss, out.per_sample, out.nonfinite_count, out.state

    elif mode == "forward_backward":
        loss_fn = _mel_loss(impl)

        def step(y_true, y_pred, lengths):
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                out = loss_fn(y_true, y_pred, lengths)
            grad = tape.gradient(out.loss, y_pred)
            return out.loss, out.nonfinite_count, out.state, grad

    elif mode == "xtts_step":
        xtts = _make_xtts_loss(impl)

        def step(y_true, y_pred, lengths):
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                loss = xtts({"mel_target": y_true, "mel_lengths": lengths},
                            {"mel_output": y_pred})
            grad = tape.gradient(loss, y_pred)
            return loss, grad

        step.xtts_loss = xtts  # keep the loss object (and its variables) alive
    else:  # pragma: no cover - validated earlier
        raise ValueError(mode)

    return tf.function(step, jit_compile=jit)


def count_ops(concrete_function) -> int:
    """Ops a concrete function runs per call, nested function bodies included.

    Placeholder/Const/NoOp/Identity and function-call wrappers are not counted.
    """
    graph_def = concrete_function.graph.as_graph_def()
    nodes = list(graph_def.node)
    for fdef in graph_def.library.function:
        nodes.extend(fdef.node_def)
    return sum(1 for node in nodes if node.op not in NON_WORK_OPS)


def _sync(device_kind: str) -> None:
    if device_kind == "gpu":
        _tf().test.experimental.sync_devices()


def _block(outputs, device_kind: str) -> None:
    """Wait until ``outputs`` are computed."""
    if device_kind == "gpu":
        _sync(device_kind)
    # On the CPU, eager calls of a tf.function return once the work is done.


def measure_bandwidth(device_kind: str, tf_device: str, nbytes: int,
                      repeats: int = 10) -> Dict[str, float]:
    """Best streaming bandwidth (GB/s, 1e9 bytes/s) over a few simple kernels.

    CPU: NumPy ``sum`` and ``copyto`` and a TF ``reduce_sum`` over a large
    buffer. GPU: a TF ``reduce_sum`` (one read) and a device copy (``-x``, one
    read and one write). Returns every method's best and the overall best.
    """
    tf = _tf()
    n = max(nbytes // 4, 1 << 16)
    results: Dict[str, float] = {}

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
        a.sum(); np.copyto(b, a)  # noqa: E702  (touch pages)
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
            reduce(x); copy(x); _sync(device_kind)  # noqa: E702

            def run_reduce():
                reduce(x)
                _sync(device_kind)

            def run_copy():
                copy(x)
                _sync(device_kind)

            results["tf_reduce_sum"] = best(run_reduce, 4 * n)
            results["device_copy"] = best(run_copy, 8 * n)
        del x
    results["best"] = max(results.values())
    return results


@dataclasses.dataclass
class _Item:
    impl: str
    mode: str
    fn: object
    ops: int = 0
    times: List[float] = dataclasses.field(default_factory=list)


def _trace_items(items: List[_Item], args, device_kind: str, tf_device: str,
                 trace_dir: str, steps: int) -> None:
    tf = _tf()
    os.makedirs(trace_dir, exist_ok=True)
    tf.profiler.experimental.start(trace_dir)
    try:
        with tf.device(tf_device):
            step_num = 0
            for item in items:
                for _ in range(steps):
                    with tf.profiler.experimental.Trace(
                            f"{item.impl}/{item.mode}", step_num=step_num, _r=1):
                        out = item.fn(*args)
                        _block(out, device_kind)
                    step_num += 1
    finally:
        tf.profiler.experimental.stop()


def profile_shape(config: ProfileConfig, batch: int, frames: int, device_kind: str,
                  tf_device: str, bandwidth_gbps: float, trace: bool = False,
                  log: Optional[Callable[[str], None]] = None) -> Tuple[List[dict], List[str]]:
    """Measure every (impl, mode) of one shape. Returns (records, failures)."""
    tf = _tf()
    mels, dtype = config.mels, config.dtype
    failures: List[str] = []
    with tf.device(tf_device):
        rotate = config.rotate_mib if config.rotate_mib is not None else (
            256 if device_kind == "gpu" else 96)
        n_sets = input_sets_for(batch, frames, mels, dtype, rotate << 20)
        arg_sets = [make_batch(batch, frames, mels, dtype, seed=config.seed, data_seed=k)
                    for k in range(n_sets)]
        args = arg_sets[0]
        valid_fraction = float(np.sum(args[2].numpy())) / (batch * frames)

        items: List[_Item] = []
        for mode in config.modes:
            for impl in config.impls:
                try:
                    fn = build_step(impl, mode)
                    concrete = fn.get_concrete_function(*args)
                    ops = count_ops(concrete)
                    out = fn(*args)  # first call: compiles (XLA) outside the timings
                    _block(out, device_kind)
                except Exception as exc:  # keep measuring the others
                    first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
                    failures.append(f"{impl}/{mode} at batch={batch} frames={frames}: "
                                    f"{exc.__class__.__name__}: {first}")
                    if log:
                        log(f"warning: skipping {failures[-1]}")
                    continue
                items.append(_Item(impl, mode, fn, ops))

        for item in items:
            for _ in range(config.warmup):
                _block(item.fn(*args), device_kind)

        # Interleave: every round runs every item once, the start rotating.
        n = len(items)
        # Round r uses input copy r % n_sets for every item.
        for r in range(config.repeats):
            round_args = arg_sets[r % n_sets]
            for k in range(n):
                item = items[(r + k) % n]
                _sync(device_kind)
                t0 = time.perf_counter()
                out = item.fn(*round_args)
                _block(out, device_kind)
                item.times.append(time.perf_counter() - t0)
                del out

        if trace and config.trace_dir and items:
            _trace_items(items, args, device_kind, tf_device, config.trace_dir,
                         config.trace_steps)

    records: List[dict] = []
    for mode in config.modes:
        nbytes = floor_bytes(mode, batch, frames, mels, dtype, valid_fraction)
        floor_ms = nbytes / (bandwidth_gbps * 1e9) * 1e3
        base = dict(batch=batch, frames=frames, mels=mels, dtype=dtype, device=device_kind)
        records.append(dict(
            impl="floor", mode=mode, **base, median_ms=floor_ms, p20_ms=floor_ms,
            p80_ms=floor_ms, gbps=bandwidth_gbps, floor_bytes=nbytes,
            floor_fraction=1.0, ops_per_step=None, speedup_vs_reference=None,
            valid_fraction=valid_fraction, repeats=0, input_sets=n_sets,
        ))
        ref_median = None
        mode_items = [it for it in items if it.mode == mode]
        for it in mode_items:
            if it.impl == "reference":
                ref_median = percentiles_ms(it.times)[0]
        for it in mode_items:
            median, p20, p80 = percentiles_ms(it.times)
            rec = dict(
                impl=it.impl, mode=mode, **base, median_ms=median, p20_ms=p20, p80_ms=p80,
                gbps=nbytes / (median * 1e-3) / 1e9, floor_bytes=nbytes,
                floor_fraction=floor_ms / median,
                ops_per_step=it.ops,
                speedup_vs_reference=(ref_median / median) if ref_median else None,
                valid_fraction=valid_fraction, repeats=len(it.times), input_sets=n_sets,
            )
            if it.impl == "xla":
                rec["xla_clusters"] = 1
            records.append(rec)
    return records, failures


@dataclasses.dataclass
class ProfileResult:
    records: List[dict]
    failures: List[str]
    device: str
    bandwidth: Dict[str, float]
    elapsed_s: float


def run_profile(config: ProfileConfig, progress: bool = True,
                log: Optional[Callable[[str], None]] = None) -> ProfileResult:
    """Run the whole measurement described by ``config``."""
    t_start = time.perf_counter()
    config.validate()
    if log is None:
        def log(msg):
            print(msg, file=sys.stderr, flush=True)

    if "fused" in config.impls:
        check_fused_available()
    if "xtts_step" in config.modes:
        check_xtts_available()
    device_kind, tf_device = resolve_device(config.device)

    if config.bandwidth_mib is not None:
        bw_bytes = config.bandwidth_mib << 20
    else:
        bw_bytes = (1 << 30) if device_kind == "gpu" else (256 << 20)
    bandwidth = measure_bandwidth(device_kind, tf_device, bw_bytes)
    log(f"streaming bandwidth on {device_kind}: {bandwidth['best']:.1f} GB/s "
        f"(best of {', '.join(f'{k} {v:.1f}' for k, v in bandwidth.items() if k != 'best')})")

    shapes = config.shape_list()
    bar = Progress(len(shapes), label="profile ") if (progress and len(shapes) > 1) else None
    records: List[dict] = []
    failures: List[str] = []
    for i, (batch, frames) in enumerate(shapes):
        recs, fails = profile_shape(config, batch, frames, device_kind, tf_device,
                                    bandwidth["best"], trace=(i == 0), log=log)
        records.extend(recs)
        failures.extend(fails)
        if bar:
            bar.update(1, note=f"batch={batch} frames={frames}")
    for rec in records:
        rec["bandwidth_gbps"] = bandwidth["best"]
    return ProfileResult(records, failures, device_kind, bandwidth,
                         time.perf_counter() - t_start)
