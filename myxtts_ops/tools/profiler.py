"""Measure what the masked mel loss costs in a training step.

Runs every implementation of every mode (:mod:`.workloads`) on synthetic mel
batches generated in process, interleaved round by round (:mod:`.timing`), and
returns one :class:`~.records.Record` per measurement. For every shape and
mode a ``floor`` record is added as well: the bytes the mode must move at least
(forward: ``y_true`` and ``y_pred`` read over the valid frames; backward: the
same two reads again and one write of the ``[B, T, M]`` gradient of
``y_pred``; :func:`.measure.floor_bytes`) divided by the streaming memory
bandwidth measured in the same run.

TensorFlow is imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable

import numpy as np

from .loss_side import LossImportError, xtts_loss_class
from .measure import count_ops, floor_bytes, hlo_stats, percentiles_ms
from .records import Record
from .tf_import import import_tensorflow
from .timing import TimedStep, measure_bandwidth, run_interleaved, sync, trace_steps
from .workloads import (
    DTYPES,
    FUSED_IMPLS,
    IMPLS,
    MODES,
    XLA_IMPLS,
    build_step,
    input_sets_for,
    make_batch,
)

DEVICES = ("auto", "cpu", "gpu")
DEFAULT_SWEEP_BATCHES = (8, 16, 32, 64)
DEFAULT_SWEEP_FRAMES = (250, 500, 1000, 2000)


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
    impls: tuple[str, ...] = IMPLS
    modes: tuple[str, ...] = MODES
    #: (batch, frames) pairs to measure; ``None`` means ``[(batch, frames)]``.
    shapes: list[tuple[int, int]] | None = None
    trace_dir: str | None = None
    trace_steps: int = 3
    seed: int = 0
    #: Size of the buffer used to measure streaming bandwidth (MiB);
    #: ``None`` picks 256 MiB on the CPU and 1 GiB on a GPU.
    bandwidth_mib: int | None = None
    #: Inputs are rotated over enough copies that their total (y_true + y_pred)
    #: reaches this many MiB, so small shapes are not timed out of the cache
    #: while the floor comes from DRAM. ``None``: 96 MiB CPU, 256 MiB GPU.
    rotate_mib: int | None = None

    def shape_list(self) -> list[tuple[int, int]]:
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
                raise ProfilerError(
                    f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}"
                )
        for mode in self.modes:
            if mode not in MODES:
                raise ProfilerError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if not self.impls or not self.modes:
            raise ProfilerError("nothing to measure: empty --impls or --modes")


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
        line = (
            f"{self.label}[{bar}] {self.done}/{self.total} "
            f"{elapsed:5.1f}s elapsed, ~{eta:5.1f}s left {note}"
        )
        if self._tty:
            self.stream.write("\r" + line.ljust(100))
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line.rstrip() + "\n")
        self.stream.flush()


def resolve_device(device: str) -> tuple[str, str]:
    """("cpu"|"gpu", TF device string) for ``auto``/``cpu``/``gpu``."""
    tf = import_tensorflow()
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

        myxtts_ops.load_ops()
    except Exception as exc:  # the loader's own message is the actionable part
        msg = str(exc) or exc.__class__.__name__
        raise ProfilerError(
            f"the fused op library could not be loaded: {msg}\n"
            "(to profile without it: --impls reference,xla)"
        ) from None


def check_fused_has_cuda() -> None:
    """On a GPU, a library without CUDA kernels would run on the CPU under a
    table that says GPU: refused, with what to do."""
    from myxtts_ops import _loader

    info = _loader.build_info()
    if info is not None and not getattr(info, "CUDA_ENABLED", False):
        raise ProfilerError(
            "the fused op library was built without CUDA kernels, so on the GPU TensorFlow "
            "would run it on the CPU. Rebuild it with a CUDA toolkit "
            "(`MYXTTS_OPS_CUDA=on pip install --force-reinstall --no-deps .`), or profile "
            "on the CPU (--device cpu), or without it (--impls reference,xla)"
        )


def check_xtts_available() -> None:
    try:
        xtts_loss_class()
    except LossImportError as exc:
        raise ProfilerError(
            f"mode xtts_step needs XTTSLoss: {exc}\n"
            "(to profile without it: --modes forward,forward_backward)"
        ) from None


@dataclasses.dataclass
class _Built(TimedStep):
    ops: int = 0
    hlo_ops: int | None = None
    custom_calls: int | None = None


def _build(impl: str, mode: str, args, device_kind: str) -> _Built:
    fn = build_step(impl, mode)
    built = _Built(impl, mode, fn, ops=count_ops(fn.get_concrete_function(*args)))
    if impl in XLA_IMPLS:
        built.hlo_ops, built.custom_calls = hlo_stats(
            fn.experimental_get_compiler_ir(*args)(stage="hlo")
        )
    sync(device_kind)
    fn(*args)  # first call: compiles (XLA) outside the timings
    sync(device_kind)
    return built


def profile_shape(
    config: ProfileConfig,
    batch: int,
    frames: int,
    device_kind: str,
    tf_device: str,
    bandwidth_gbps: float,
    trace: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[list[Record], list[str]]:
    """Measure every (impl, mode) of one shape. Returns (records, failures)."""
    tf = import_tensorflow()
    mels, dtype = config.mels, config.dtype
    failures: list[str] = []
    with tf.device(tf_device):
        rotate = (
            config.rotate_mib
            if config.rotate_mib is not None
            else (256 if device_kind == "gpu" else 96)
        )
        n_sets = input_sets_for(batch, frames, mels, dtype, rotate << 20)
        arg_sets = [
            make_batch(batch, frames, mels, dtype, seed=config.seed, data_seed=k)
            for k in range(n_sets)
        ]
        args = arg_sets[0]
        valid_fraction = float(np.sum(args[2].numpy())) / (batch * frames)

        steps: list[_Built] = []
        for mode in config.modes:
            for impl in config.impls:
                try:
                    steps.append(_build(impl, mode, args, device_kind))
                except Exception as exc:  # keep measuring the others
                    first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
                    failures.append(
                        f"{impl}/{mode} at batch={batch} frames={frames}: "
                        f"{exc.__class__.__name__}: {first}"
                    )
                    if log:
                        log(f"warning: skipping {failures[-1]}")

        run_interleaved(steps, arg_sets, config.repeats, config.warmup, device_kind)
        if trace and config.trace_dir and steps:
            trace_steps(steps, args, device_kind, tf_device, config.trace_dir, config.trace_steps)

    records: list[Record] = []
    for mode in config.modes:
        nbytes = floor_bytes(mode, batch, frames, mels, dtype, valid_fraction)
        floor_ms = nbytes / (bandwidth_gbps * 1e9) * 1e3
        common = dict(
            mode=mode,
            batch=batch,
            frames=frames,
            mels=mels,
            dtype=dtype,
            device=device_kind,
            floor_bytes=nbytes,
            valid_fraction=valid_fraction,
            input_sets=n_sets,
            bandwidth_gbps=bandwidth_gbps,
        )
        records.append(
            Record(
                impl="floor",
                median_ms=floor_ms,
                p20_ms=floor_ms,
                p80_ms=floor_ms,
                gbps=bandwidth_gbps,
                floor_fraction=1.0,
                **common,
            )
        )
        mode_steps = [s for s in steps if s.mode == mode]
        ref_median = next(
            (percentiles_ms(s.times)[0] for s in mode_steps if s.impl == "reference"), None
        )
        for s in mode_steps:
            median, p20, p80 = percentiles_ms(s.times)
            records.append(
                Record(
                    impl=s.impl,
                    median_ms=median,
                    p20_ms=p20,
                    p80_ms=p80,
                    gbps=nbytes / (median * 1e-3) / 1e9,
                    floor_fraction=floor_ms / median,
                    ops_per_step=s.ops,
                    speedup_vs_reference=(ref_median / median) if ref_median else None,
                    repeats=len(s.times),
                    xla_hlo_ops=s.hlo_ops,
                    xla_custom_calls=s.custom_calls,
                    **common,
                )
            )
    return records, failures


@dataclasses.dataclass
class ProfileResult:
    records: list[Record]
    failures: list[str]
    device: str
    bandwidth: dict[str, float]
    elapsed_s: float


def run_profile(
    config: ProfileConfig, progress: bool = True, log: Callable[[str], None] | None = None
) -> ProfileResult:
    """Run the whole measurement described by ``config``."""
    t_start = time.perf_counter()
    config.validate()
    if log is None:

        def log(msg):
            print(msg, file=sys.stderr, flush=True)

    import_tensorflow()  # before the op library loads it: start-up notices once
    if FUSED_IMPLS.intersection(config.impls):
        check_fused_available()
    if "xtts_step" in config.modes:
        check_xtts_available()
    device_kind, tf_device = resolve_device(config.device)
    if device_kind == "gpu" and FUSED_IMPLS.intersection(config.impls):
        check_fused_has_cuda()

    if config.bandwidth_mib is not None:
        bw_bytes = config.bandwidth_mib << 20
    else:
        bw_bytes = (1 << 30) if device_kind == "gpu" else (256 << 20)
    bandwidth = measure_bandwidth(device_kind, tf_device, bw_bytes)
    methods = ", ".join(f"{k} {v:.1f}" for k, v in bandwidth.items() if k != "best")
    log(f"streaming bandwidth on {device_kind}: {bandwidth['best']:.1f} GB/s (best of {methods})")

    shapes = config.shape_list()
    bar = Progress(len(shapes), label="profile ") if (progress and len(shapes) > 1) else None
    records: list[Record] = []
    failures: list[str] = []
    for i, (batch, frames) in enumerate(shapes):
        recs, fails = profile_shape(
            config,
            batch,
            frames,
            device_kind,
            tf_device,
            bandwidth["best"],
            trace=(i == 0),
            log=log,
        )
        records.extend(recs)
        failures.extend(fails)
        if bar:
            bar.update(1, note=f"batch={batch} frames={frames}")
    return ProfileResult(records, failures, device_kind, bandwidth, time.perf_counter() - t_start)
