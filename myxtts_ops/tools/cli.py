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
import time
from collections.abc import Sequence

from .._loader import OpLibraryError
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


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32 - 1], got {value}")
    return value


def _plot_formats() -> dict[str, str]:
    """{extension: description} of the chart formats matplotlib can write."""
    from matplotlib.backend_bases import FigureCanvasBase

    return FigureCanvasBase.get_supported_filetypes()


def _output_path_error(option: str, path: str, directory: bool = False) -> str | None:
    """Why ``path`` cannot be written (checked before measuring), or None."""
    import os

    full = os.path.abspath(path)
    if os.path.exists(full):
        if directory and not os.path.isdir(full):
            return f"{option} {path}: exists and is not a directory (a trace is a directory)"
        if not directory and os.path.isdir(full):
            return f"{option} {path}: is a directory, expected a file path"
        target = full if directory else os.path.dirname(full)
    else:
        # The first existing ancestor: the writer creates the folders below it.
        target = os.path.dirname(full)
        while not os.path.exists(target):
            target = os.path.dirname(target)
        if not os.path.isdir(target):
            return f"{option} {path}: {target} is not a directory"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"{option} {path}: {target} is not writable"
    if option == "--plot":
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        formats = _plot_formats()
        if ext and ext not in formats:
            return (
                f"{option} {path}: matplotlib cannot write .{ext} charts; use one of "
                f"{', '.join('.' + e for e in sorted(formats))}"
            )
    return None


def _check_output_paths(parser, args, options) -> None:
    import os

    for option, directory in options:
        name = option.lstrip("-")
        path = getattr(args, name)
        if path is not None:
            if option == "--plot" and not os.path.splitext(path)[1]:
                # matplotlib writes PATH.png then: name (and report) that file.
                path = path + ".png"
                setattr(args, name, path)
            message = _output_path_error(option, path, directory)
            if message:
                parser.error(message)


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
        default=None,
        metavar="LIST",
        help=f"batch sizes for --sweep (default {','.join(map(str, DEFAULT_SWEEP_BATCHES))})",
    )
    run.add_argument(
        "--sweep-frames",
        type=_int_list,
        default=None,
        metavar="LIST",
        help=f"frame counts for --sweep (default {','.join(map(str, DEFAULT_SWEEP_FRAMES))})",
    )
    run.add_argument("--seed", type=_seed, default=0, help="seed of the synthetic data")
    run.add_argument(
        "--terms",
        action="store_true",
        help="also time each XTTSLoss term alone (every head of the default MyXTTS model, "
        "float32) and print its share of the whole loss's step",
    )
    run.add_argument(
        "--tokens",
        type=_positive_int,
        default=None,
        help=f"text tokens for --terms (default {DEFAULT_TOKENS})",
    )
    run.add_argument(
        "--heads",
        type=_positive_int,
        default=None,
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
        help="rotate over input copies totalling at least MIB (at most 16 copies), so "
        "small shapes are not timed from the cache (default 96 CPU, 256 GPU)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the records as a JSON list")
    out.add_argument(
        "--plot",
        metavar="PATH",
        help="write a chart, in the format of the extension (.png, .pdf, .svg, ...)",
    )
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
    d.add_argument(
        "--plot",
        metavar="PATH",
        default="demo.png",
        help="chart path; the extension picks the format (default demo.png)",
    )
    d.add_argument("--json", metavar="PATH", help="also write the per-step history as JSON")
    d.add_argument(
        "--implementation",
        choices=("fused", "reference"),
        default="fused",
        help="XTTSLoss implementation (default fused)",
    )
    d.add_argument("--batch", type=_positive_int, default=16, help="batch size (default 16)")
    d.add_argument("--frames", type=_positive_int, default=200, help="frames (default 200)")
    d.add_argument("--seed", type=_seed, default=0, help="seed (default 0)")
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
    # An option that would do nothing is refused, not ignored.
    for option, needs in (
        ("sweep_batches", "sweep"),
        ("sweep_frames", "sweep"),
        ("tokens", "terms"),
        ("heads", "terms"),
    ):
        if getattr(args, option) is not None and not getattr(args, needs):
            parser.error(f"--{option.replace('_', '-')} applies only with --{needs}")
    if args.terms and args.sweep:
        parser.error("--terms times one shape (--batch/--frames/--mels); drop --sweep")
    _check_output_paths(parser, args, (("--json", False), ("--plot", False), ("--trace", True)))
    sweep_batches = args.sweep_batches or list(DEFAULT_SWEEP_BATCHES)
    sweep_frames = args.sweep_frames or list(DEFAULT_SWEEP_FRAMES)
    tokens = args.tokens or DEFAULT_TOKENS
    heads = args.heads or DEFAULT_HEADS

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
        shapes=([(b, t) for b in sweep_batches for t in sweep_frames] if args.sweep else None),
        trace_dir=args.trace,
        seed=args.seed,
        bandwidth_mib=args.bandwidth_mib,
        rotate_mib=args.rotate_mib,
    )
    try:
        from . import report
        from .profiler import run_profile

        started = time.perf_counter()
        import_tensorflow()
        result = run_profile(config, progress=not args.no_progress)
        print(report.format_table(result.records), end="")
        unwritten = 0
        for option, path, write in (
            ("--json", args.json, report.write_json),
            ("--plot", args.plot, report.plot),
        ):
            if path:
                try:
                    write(result.records, path)
                    print(f"wrote {path}")
                except OSError as exc:  # the next output is still written
                    unwritten += 1
                    _error("profile", f"{option} {path}: {exc.strerror or exc}")
        if args.trace:
            print(f"wrote a profiler trace to {args.trace} (tensorboard --logdir {args.trace})")
        if args.terms:
            from .profiler import resolve_device
            from .term_shares import format_term_table, measure_term_shares

            _, tf_device = resolve_device(config.device)
            shape = dict(batch=config.batch, frames=config.frames, mels=config.mels)
            whole_ms, shares = measure_term_shares(
                **shape,
                tokens=tokens,
                heads=heads,
                repeats=config.repeats,
                seed=config.seed,
                tf_device=tf_device,
                # The mel term through the fused op only where it was asked for
                # (--impls reference,xla runs where the op library cannot load).
                implementation="fused"
                if {"fused", "fused_xla"} & set(config.impls)
                else "reference",
            )
            print()
            print(
                format_term_table(whole_ms, shares, **shape, tokens=tokens, heads=heads),
                end="",
            )
        print(f"profile took {time.perf_counter() - started:.1f} s")
        if unwritten:
            return 1
    except (ProfilerError, OpLibraryError) as exc:
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

    _check_output_paths(parser, args, (("--json", False), ("--plot", False)))
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
    except (DemoError, OpLibraryError) as exc:
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
