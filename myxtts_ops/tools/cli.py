"""Command-line entry point: ``myxtts-ops profile`` and ``myxtts-ops demo``.

Also reachable as ``python -m myxtts_ops``. Argument errors are argparse usage
errors (exit status 2); errors such as an op library that does not load print
a one-paragraph message and exit with status 1, without a traceback.
TensorFlow is imported only once the arguments are valid, through
:func:`.tf_import.import_tensorflow` (its start-up notices printed once).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .profiler import DEFAULT_SWEEP_BATCHES, DEFAULT_SWEEP_FRAMES
from .tf_import import import_tensorflow
from .workloads import DEFAULT_HEADS, DEFAULT_TOKENS, DTYPES, IMPLS, MODES

PROG = "myxtts-ops"

QUICK_SHAPE = dict(batch=32, frames=1000, mels=80, dtype="float32")
QUICK_REPEATS = 15
QUICK_WARMUP = 2
DEFAULT_REPEATS = 50
DEFAULT_WARMUP = 5


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _choice_list(choices: Sequence[str]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list from {', '.join(choices)}"
            )
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown value(s) {', '.join(map(repr, bad))}; choose from {', '.join(choices)}"
            )
        out: list[str] = []
        for t in items:  # keep the user's order, drop repeats
            if t not in out:
                out.append(t)
        return out

    parse.__name__ = "list"
    return parse


def _int_list(text: str) -> list[int]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of positive integers")
    return [_positive_int(t) for t in items]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fused masked mel-spectrogram loss for TensorFlow: profiler and demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{profile,demo}")
    sub.required = True

    p = sub.add_parser(
        "profile",
        help="measure fused op vs plain TF vs XLA on synthetic mel batches",
        description=(
            "Measure the masked mel loss (forward, forward+backward, full XTTSLoss step) "
            "for the fused op, the plain-TF reference in tf.function, the reference "
            "under XLA and the fused op under XLA, on synthetic batches with per-sample lengths in [T/2, T]. "
            "Reports median/p20/p80 ms, effective GB/s and the fraction of the memory-"
            "bandwidth floor measured in the same run."
        ),
    )
    shape = p.add_argument_group("shape")
    shape.add_argument("--batch", type=_positive_int, default=None, help="batch size (default 32)")
    shape.add_argument(
        "--frames",
        type=_positive_int,
        default=None,
        help="frames T; lengths are drawn from [T/2, T] (default 1000)",
    )
    shape.add_argument("--mels", type=_positive_int, default=None, help="mel bins (default 80)")
    shape.add_argument("--dtype", choices=DTYPES, default=None, help="dtype (default float32)")
    run = p.add_argument_group("measurement")
    run.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="auto: the GPU when TensorFlow sees one, else the CPU",
    )
    run.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help=f"timed rounds (default {DEFAULT_REPEATS}; {QUICK_REPEATS} with --quick)",
    )
    run.add_argument(
        "--warmup",
        type=_nonnegative_int,
        default=None,
        help=f"untimed calls after tracing (default {DEFAULT_WARMUP}; {QUICK_WARMUP} with --quick)",
    )
    run.add_argument(
        "--impls",
        type=_choice_list(IMPLS),
        default=list(IMPLS),
        help=f"comma-separated implementations (default {','.join(IMPLS)})",
    )
    run.add_argument(
        "--modes",
        type=_choice_list(MODES),
        default=list(MODES),
        help=f"comma-separated modes (default {','.join(MODES)})",
    )
    run.add_argument(
        "--quick",
        action="store_true",
        help="one shape: batch 32, 1000 frames, 80 mels, float32, few repeats",
    )
    run.add_argument(
        "--sweep",
        action="store_true",
        help="measure every combination of --sweep-batches and --sweep-frames",
    )
    run.add_argument(
        "--sweep-batches",
        type=_int_list,
        default=list(DEFAULT_SWEEP_BATCHES),
        metavar="LIST",
        help=f"batch sizes for --sweep (default {','.join(map(str, DEFAULT_SWEEP_BATCHES))})",
    )
    run.add_argument(
        "--sweep-frames",
        type=_int_list,
        default=list(DEFAULT_SWEEP_FRAMES),
        metavar="LIST",
        help=f"frame counts for --sweep (default {','.join(map(str, DEFAULT_SWEEP_FRAMES))})",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    run.add_argument(
        "--terms",
        action="store_true",
        help="also time each XTTSLoss term alone (every head of the default MyXTTS model, "
        "float32) and print its share of the whole loss's step",
    )
    run.add_argument(
        "--tokens",
        type=_positive_int,
        default=DEFAULT_TOKENS,
        help=f"text tokens for --terms (default {DEFAULT_TOKENS})",
    )
    run.add_argument(
        "--heads",
        type=_positive_int,
        default=DEFAULT_HEADS,
        help=f"attention heads for --terms (default {DEFAULT_HEADS})",
    )
    run.add_argument(
        "--bandwidth-mib",
        type=_positive_int,
        default=None,
        metavar="MIB",
        help="buffer size for the bandwidth measurement (default 256 CPU, 1024 GPU)",
    )
    run.add_argument(
        "--rotate-mib",
        type=_positive_int,
        default=None,
        metavar="MIB",
        help="rotate over input copies totalling at least MIB, so small shapes are "
        "not timed from the cache (default 96 CPU, 256 GPU)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the records as a JSON list")
    out.add_argument("--plot", metavar="PATH", help="write a PNG chart")
    out.add_argument(
        "--trace",
        metavar="DIR",
        help="write a TensorBoard profiler trace of a few steps of each implementation",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(handler=_cmd_profile, subparser=p)

    d = sub.add_parser(
        "demo",
        help="train a small mel decoder with XTTSLoss and plot the adaptive weight",
        description=(
            "Train a small Keras mel decoder on synthetic data with XTTSLoss (adaptive "
            "weights on), inject a batch with NaN targets and a 50x loss spike, and plot "
            "mel loss, running mean, window variance and mel weight over the steps."
        ),
    )
    d.add_argument("--steps", type=_positive_int, default=400, help="training steps (default 400)")
    d.add_argument("--plot", metavar="PATH", default="demo.png", help="PNG path (default demo.png)")
    d.add_argument("--json", metavar="PATH", help="also write the per-step history as JSON")
    d.add_argument(
        "--implementation",
        choices=("fused", "reference"),
        default="fused",
        help="XTTSLoss implementation (default fused)",
    )
    d.add_argument("--batch", type=_positive_int, default=16, help="batch size (default 16)")
    d.add_argument("--frames", type=_positive_int, default=200, help="frames (default 200)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(handler=_cmd_demo, subparser=d)
    return parser


def _error(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return 1


def _cmd_profile(args, parser) -> int:
    from .profiler import ProfileConfig, ProfilerError

    if args.quick and args.sweep:
        parser.error("--quick and --sweep exclude each other")
    if args.quick:
        given = [f"--{k}" for k in QUICK_SHAPE if getattr(args, k) is not None]
        if given:
            parser.error(
                f"--quick measures batch 32, 1000 frames, 80 mels, float32; drop {', '.join(given)}"
            )
    if args.sweep and (args.batch is not None or args.frames is not None):
        parser.error("with --sweep use --sweep-batches/--sweep-frames instead of --batch/--frames")

    config = ProfileConfig(
        batch=args.batch or QUICK_SHAPE["batch"],
        frames=args.frames or QUICK_SHAPE["frames"],
        mels=args.mels or QUICK_SHAPE["mels"],
        dtype=args.dtype or QUICK_SHAPE["dtype"],
        device=args.device,
        repeats=args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS),
        warmup=args.warmup
        if args.warmup is not None
        else (QUICK_WARMUP if args.quick else DEFAULT_WARMUP),
        impls=tuple(args.impls),
        modes=tuple(args.modes),
        shapes=(
            [(b, t) for b in args.sweep_batches for t in args.sweep_frames] if args.sweep else None
        ),
        trace_dir=args.trace,
        seed=args.seed,
        bandwidth_mib=args.bandwidth_mib,
        rotate_mib=args.rotate_mib,
    )
    try:
        from . import report
        from .profiler import run_profile

        import_tensorflow()
        result = run_profile(config, progress=not args.no_progress)
        print(report.format_table(result.records), end="")
        if args.json:
            report.write_json(result.records, args.json)
            print(f"wrote {args.json}")
        if args.plot:
            report.plot(result.records, args.plot)
            print(f"wrote {args.plot}")
        if args.trace:
            print(f"wrote a profiler trace to {args.trace} (tensorboard --logdir {args.trace})")
        if args.terms:
            from .profiler import resolve_device
            from .term_shares import format_term_table, measure_term_shares

            _, tf_device = resolve_device(config.device)
            shape = dict(batch=config.batch, frames=config.frames, mels=config.mels)
            whole_ms, shares = measure_term_shares(
                **shape,
                tokens=args.tokens,
                heads=args.heads,
                repeats=config.repeats,
                seed=config.seed,
                tf_device=tf_device,
            )
            print()
            print(
                format_term_table(whole_ms, shares, **shape, tokens=args.tokens, heads=args.heads),
                end="",
            )
        print(f"profile took {result.elapsed_s:.1f} s")
    except ProfilerError as exc:
        return _error("profile", str(exc))
    except OSError as exc:
        return _error("profile", f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    if result.failures:
        for f in result.failures:
            print(f"{PROG} profile: failed: {f}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args, parser) -> int:
    from .demo import DemoError, run_demo

    try:
        import_tensorflow()
        run_demo(
            steps=args.steps,
            plot_path=args.plot,
            json_path=args.json,
            implementation=args.implementation,
            batch=args.batch,
            frames=args.frames,
            seed=args.seed,
        )
    except DemoError as exc:
        return _error("demo", str(exc))
    except OSError as exc:
        return _error("demo", f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args, args.subparser) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
