#!/usr/bin/env python3
"""XTTSLoss cost inside a training-step graph, whole and per term (BENCHMARKS.md).

    python benchmarks/xtts_terms_bench.py                  # CPU benchmark shape
    python benchmarks/xtts_terms_bench.py --repeats 30 --out benchmarks/results/xtts_terms

Method (as ``benchmarks/cpu_bench.py``'s ``in_graph_ms``): one ``tf.function``
runs the measured step on ``--sets`` different input sets (so they come from
memory, not cache), the same function without the loss is subtracted (the
Python-to-TF call a real step pays once whatever its loss), and the result is
divided by the number of sets. Every step is forward + backward (the gradient
with respect to every prediction), and one element of each gradient is
returned so nothing is pruned.

Rows:

1. the fused op alone, forward + backward (the mel term's floor);
2. XTTSLoss with mel + stop terms (the SPEC 4.4 / issue 10 budget: <= 1.2x row 1),
   in a plain step graph and in one compiled with XLA (``jit_compile=True``,
   the MyXTTS trainer's default), each against the op in the same kind of graph;
3. XTTSLoss with every head of the default MyXTTS model at realistic shapes
   (attention weights [B, heads, frames, tokens], larger than the mel tensor);
4. each term alone (``XTTSLoss.term_functions``), forward + backward: its share
   of row 3;
5. with ``--breakdown``, where row 2's plain-graph cost goes: XTTSLoss without
   the stop term and/or without its training-state updates (``training=False``
   skips the adaptive rule, smoothing and state writes), each against row 1;
   the two fused ops alone (mel op + stop-token op, no XTTSLoss: the floor of
   any loss with these two terms); what one scalar TF op costs when, like the
   weight decision, it stands between the op's forward and its backward (the
   op with a stand-in decision of ``CHAIN_OPS`` scalar ops against the op
   alone); and the stop term alone through the fused stop-token op against
   the same term in TF ops (``stop_stats(fused=False)``, what XLA compiles).
"""

import argparse
import importlib.util
import json
import os
import platform
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for name, path in (("myxtts_ops", ROOT), ("myxtts_loss", os.path.join(ROOT, "python"))):
    if importlib.util.find_spec(name) is None:
        sys.path.insert(0, path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from myxtts_ops.tools.term_shares import (  # noqa: E402
    forward_backward,
    interleaved_seconds,
    measure_term_shares,
    myxtts_inputs,
    step_graph,
)


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: --breakdown graphs: (name, with the stop term, training).
BREAKDOWN = (
    ("mel_no_updates", False, False),
    ("mel", False, True),
    ("mel_stop_no_updates", True, False),
)

#: Scalar ops in the stand-in weight decision of the --breakdown per-op row.
CHAIN_OPS = 300


def measure(args):
    import myxtts_ops
    from myxtts_loss import XTTSLoss, terms

    rng = np.random.default_rng(0)
    results = {}
    shape = dict(batch=args.batch, frames=args.frames, mels=args.mels)
    base_inputs = myxtts_inputs(
        rng, args.sets, args.batch, args.frames, args.mels, args.tokens, args.heads, all_heads=False
    )

    def baseline(k, yt, yp):
        return yt["mel_target"][0, 0, 0] + yp["mel_output"][0, 0, 0]

    def op_fb(k, yt, yp):
        lens = tf.cast(yt["mel_lengths"], tf.int32)
        return forward_backward(
            lambda p: myxtts_ops.masked_mel_loss(yt["mel_target"], p["mel_output"], lens).loss,
            {"mel_output": yp["mel_output"]},
        )

    losses = {"": XTTSLoss(), "_xla": XTTSLoss()}  # one state per graph

    graphs = {}
    for suffix, jit in (("", False), ("_xla", True)):
        loss_fn = losses[suffix]

        def xtts_mel_stop(k, yt, yp, loss_fn=loss_fn):
            return forward_backward(lambda p: loss_fn(yt, p), yp)

        graphs["base" + suffix] = step_graph(baseline, base_inputs, jit)
        graphs["op" + suffix] = step_graph(op_fb, base_inputs, jit)
        graphs["loss" + suffix] = step_graph(xtts_mel_stop, base_inputs, jit)
    if args.breakdown:
        # Plain graph, parts removed: the stop term, and the training-state
        # updates (rule, smoothing, state writes; training=False skips them).
        for name, stop, training in BREAKDOWN:
            loss_fn = XTTSLoss()

            def part(k, yt, yp, loss_fn=loss_fn, stop=stop, training=training):
                if not stop:
                    yt = {n: v for n, v in yt.items() if n != "stop_target"}
                    yp = {n: v for n, v in yp.items() if n != "stop_tokens"}
                return forward_backward(lambda p: loss_fn(yt, p, training=training), yp)

            graphs[name] = step_graph(part, base_inputs)
        # The stop term alone, fused op against the TF ops XLA compiles.
        for name, fused in (("stop_fused", True), ("stop_tf_ops", False)):

            def stop_term(k, yt, yp, fused=fused):
                lens = tf.cast(yt["mel_lengths"], tf.int32)

                def value(p):
                    s = terms.stop_stats(yt["stop_target"], p["stop_tokens"], lens, fused=fused)
                    return s.num / s.den

                return forward_backward(value, {"stop_tokens": yp["stop_tokens"]})

            graphs[name] = step_graph(stop_term, base_inputs)

        def fused_ops_only(k, yt, yp):
            lens = tf.cast(yt["mel_lengths"], tf.int32)

            def value(p):
                mel = myxtts_ops.masked_mel_loss(yt["mel_target"], p["mel_output"], lens).loss
                s = terms.stop_stats(yt["stop_target"], p["stop_tokens"], lens, fused=True)
                return mel + s.num / s.den

            return forward_backward(value, yp)

        def op_with_decision(k, yt, yp):
            # A stand-in for the weight decision: CHAIN_OPS scalar ops from the
            # forward's loss to a weight that scales it, so the backward waits.
            lens = tf.cast(yt["mel_lengths"], tf.int32)

            def value(p):
                mel = myxtts_ops.masked_mel_loss(yt["mel_target"], p["mel_output"], lens).loss
                w = tf.stop_gradient(mel)
                for _ in range(CHAIN_OPS // 3):  # Greater, Mul, SelectV2
                    w = tf.where(w > 1e30, w * 0.5, w)
                return tf.where(w > 1e30, 0.5, 1.0) * mel

            return forward_backward(value, {"mel_output": yp["mel_output"]})

        graphs["fused_ops_only"] = step_graph(fused_ops_only, base_inputs)
        graphs["op_with_decision"] = step_graph(op_with_decision, base_inputs)
    raw = {
        k: np.asarray(v) for k, v in interleaved_seconds(graphs, args.repeats * args.rounds).items()
    }
    med = {k: float(np.median(v)) * 1e3 for k, v in raw.items()}
    for suffix in ("", "_xla"):
        base = raw["base" + suffix]
        op_steps = (raw["op" + suffix] - base) / args.sets
        loss_steps = (raw["loss" + suffix] - base) / args.sets
        results["mel_stop" + suffix] = {
            "op_forward_backward_ms": (med["op" + suffix] - med["base" + suffix]) / args.sets,
            "xtts_mel_stop_ms": (med["loss" + suffix] - med["base" + suffix]) / args.sets,
            "ratio": float(np.median(loss_steps / op_steps)),  # median of per-round ratios
            "ratio_p20": float(np.percentile(loss_steps / op_steps, 20)),
            "ratio_p80": float(np.percentile(loss_steps / op_steps, 80)),
            **shape,
        }

    if args.breakdown:
        base, op_steps = raw["base"], (raw["op"] - raw["base"]) / args.sets
        results["breakdown"] = {
            name: float(np.median((raw[name] - base) / args.sets / op_steps))
            for name, _, _ in BREAKDOWN
        }
        results["breakdown"]["mel_stop"] = results["mel_stop"]["ratio"]
        results["breakdown"]["fused_ops_only"] = float(
            np.median((raw["fused_ops_only"] - base) / args.sets / op_steps)
        )
        per_op_us = (raw["op_with_decision"] - raw["op"]) / args.sets / CHAIN_OPS * 1e6
        results["scalar_op_us"] = {
            "median": float(np.median(per_op_us)),
            "p20": float(np.percentile(per_op_us, 20)),
            "p80": float(np.percentile(per_op_us, 80)),
            "chain_ops": CHAIN_OPS,
        }
        stop_ms = {n: (raw[n] - base) / args.sets for n in ("stop_fused", "stop_tf_ops")}
        results["stop_term"] = {
            "fused_ms": float(np.median(stop_ms["stop_fused"])) * 1e3,
            "tf_ops_ms": float(np.median(stop_ms["stop_tf_ops"])) * 1e3,
            "tf_ops_over_fused": float(np.median(stop_ms["stop_tf_ops"] / stop_ms["stop_fused"])),
            "tf_ops_over_fused_p20": float(
                np.percentile(stop_ms["stop_tf_ops"] / stop_ms["stop_fused"], 20)
            ),
            "tf_ops_over_fused_p80": float(
                np.percentile(stop_ms["stop_tf_ops"] / stop_ms["stop_fused"], 80)
            ),
        }

    # Every head at realistic shapes.
    del base_inputs, graphs
    full_ms, shares = measure_term_shares(
        args.batch,
        args.frames,
        args.mels,
        args.tokens,
        args.heads,
        repeats=args.repeats,
        sets=args.sets_all,
    )
    results["all_heads"] = {
        "xtts_all_heads_ms": full_ms,
        "per_term_ms": {t.term: t.median_ms for t in shares},
        "share_of_step": {t.term: t.share for t in shares},
        "tokens": args.tokens,
        "heads": args.heads,
        **shape,
    }
    return results


def to_markdown(results, args):
    r = results["mel_stop"]
    x = results["mel_stop_xla"]
    a = results["all_heads"]
    lines = [
        f"Machine: {_cpu_name()}, {os.cpu_count()} logical CPUs, TF {tf.__version__}. "
        f"Command: `python benchmarks/xtts_terms_bench.py {args.command_line}`. "
        "Per-step medians inside a step graph (forward + backward); "
        f"graphs called in turn; load average during the run: {os.getloadavg()[0]:.1f}.",
        "",
        f"| [B, T, M] = [{r['batch']}, {r['frames']}, {r['mels']}] float32 | ms per step | ratio |",
        "|---|---|---|",
        f"| fused op, forward + backward | {r['op_forward_backward_ms']:.3f} | 1.00 |",
        f"| XTTSLoss, mel + stop terms | {r['xtts_mel_stop_ms']:.3f} | {r['ratio']:.2f} "
        f"(p20 {r['ratio_p20']:.2f}, p80 {r['ratio_p80']:.2f}) |",
        f"| fused op, forward + backward, jit_compile=True | {x['op_forward_backward_ms']:.3f} "
        "| 1.00 |",
        f"| XTTSLoss, mel + stop terms, jit_compile=True | {x['xtts_mel_stop_ms']:.3f} | "
        f"{x['ratio']:.2f} (p20 {x['ratio_p20']:.2f}, p80 {x['ratio_p80']:.2f}) |",
        "",
        f"Every head of the default MyXTTS model (attention weights [{a['batch']}, {a['heads']}, "
        f"{a['frames']}, {a['tokens']}], {a['tokens']} tokens): XTTSLoss "
        f"{a['xtts_all_heads_ms']:.3f} ms per step.",
        "",
        "| term (alone, forward + backward) | ms per step | share of the XTTSLoss step |",
        "|---|---|---|",
    ]
    for name, ms in a["per_term_ms"].items():
        if ms <= 0:  # cheaper than the baseline graph: below what the subtraction resolves
            lines.append(f"| {name} | < noise | - |")
        else:
            lines.append(f"| {name} | {ms:.3f} | {100 * a['share_of_step'][name]:.1f} % |")
    if "breakdown" in results:
        d = results["breakdown"]
        lines += [
            "",
            "Plain step graph, parts removed (XTTSLoss / fused op, median of per-round ratios):",
            "",
            "| terms | training=False (no state updates) | training=True |",
            "|---|---|---|",
            f"| mel | {d['mel_no_updates']:.2f} | {d['mel']:.2f} |",
            f"| mel + stop | {d['mel_stop_no_updates']:.2f} | {d['mel_stop']:.2f} |",
            "",
            f"The two fused ops alone (mel op + stop-token op, no XTTSLoss; the floor of any "
            f"loss with these terms): {d['fused_ops_only']:.2f}.",
        ]
        so = results["scalar_op_us"]
        lines += [
            "",
            f"One scalar TF op between the op's forward and its backward (a stand-in weight "
            f"decision of {so['chain_ops']} ops against the op alone): {so['median']:.2f} us "
            f"per op (p20 {so['p20']:.2f}, p80 {so['p80']:.2f}).",
        ]
        st = results["stop_term"]
        lines += [
            "",
            "The stop term alone (forward + backward, plain step graph): fused stop-token op "
            f"{st['fused_ms']:.3f} ms, the same term in TF ops (its XLA form) "
            f"{st['tf_ops_ms']:.3f} ms per step: {st['tf_ops_over_fused']:.2f}x (p20 "
            f"{st['tf_ops_over_fused_p20']:.2f}, p80 {st['tf_ops_over_fused_p80']:.2f}).",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--mels", type=int, default=80)
    p.add_argument("--tokens", type=int, default=150)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--sets", type=int, default=8)
    p.add_argument("--sets-all", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3, help="mel+stop rows: repeats x rounds calls")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the plain graph without the stop term and without the state updates",
    )
    p.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    # The run's own arguments, for the record (--breakdown and --out included).
    args.command_line = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    results = measure(args)
    md = to_markdown(results, args)
    print(md)
    if args.out:
        with open(args.out + ".json", "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        with open(args.out + ".md", "w", encoding="utf-8") as f:
            f.write(md)


if __name__ == "__main__":
    main()
