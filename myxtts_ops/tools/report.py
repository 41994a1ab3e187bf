"""Output of the profiler: a text table, JSON records, Markdown and a PNG chart."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable

from .measure import DTYPE_SIZES
from .records import Record
from .workloads import IMPLS, MODES

_IMPL_ORDER = {name: i for i, name in enumerate(IMPLS + ("floor",))}
_MODE_ORDER = {name: i for i, name in enumerate(MODES)}
_COLORS = {
    "fused": "#1f77b4",
    "reference": "#ff7f0e",
    "xla": "#2ca02c",
    "fused_xla": "#9467bd",
    "floor": "black",
}


def _shape_key(rec: Record):
    return (rec.batch, rec.frames, rec.mels, rec.dtype, rec.device)


def _sorted(records: Iterable[Record]) -> list[Record]:
    return sorted(
        records,
        key=lambda r: (_shape_key(r), _MODE_ORDER.get(r.mode, 99), _IMPL_ORDER.get(r.impl, 99)),
    )


def _ops_text(rec: Record) -> str:
    """Graph ops per step; for XLA rows also the HLO size and custom calls, measured."""
    if rec.impl == "floor" or rec.ops_per_step is None:
        return "-"
    if rec.xla_hlo_ops is None:
        return str(rec.ops_per_step)
    calls = rec.xla_custom_calls or 0
    kernels = f"{calls} custom call(s)" if calls else "no custom call"
    if rec.impl == "fused_xla" and not calls:
        kernels += ": reference fallback"
    return f"{rec.ops_per_step} -> {rec.xla_hlo_ops} HLO, {kernels}"


def _fmt_ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def format_table(records: Iterable[Record], markdown: bool = False) -> str:
    """A readable table of the records, grouped by shape and mode."""
    records = _sorted(records)
    headers = [
        "mode",
        "impl",
        "median ms",
        "p20 ms",
        "p80 ms",
        "GB/s",
        "% of floor",
        "vs reference",
        "ops/step",
    ]
    lines: list[str] = []
    current = None
    rows: list[list[str]] = []

    def flush():
        if not rows:
            return
        if markdown:
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "|".join(["---"] * 2 + ["---:"] * 6 + ["---"]) + "|")
            for row in rows:
                lines.append("| " + " | ".join(row) + " |")
        else:
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

            def fmt(cells):
                out = []
                for i, c in enumerate(cells):
                    out.append(c.ljust(widths[i]) if i in (0, 1, 8) else c.rjust(widths[i]))
                return "  ".join(out).rstrip()

            lines.append(fmt(headers))
            lines.append("  ".join("-" * w for w in widths))
            lines.extend(fmt(r) for r in rows)
        lines.append("")
        rows.clear()

    last_mode = None
    for rec in records:
        key = _shape_key(rec)
        if key != current:
            flush()
            current = key
            last_mode = None
            b, t, m, dt, dev = key
            valid = rec.valid_fraction
            bw = rec.bandwidth_gbps
            title = (
                f"shape [{b}, {t}, {m}] {dt} on {dev}"
                + (f", {valid:.0%} of frames valid" if valid is not None else "")
                + (f", streaming bandwidth {bw:.1f} GB/s" if bw else "")
            )
            lines.append(f"### {title}" if markdown else title)
            if markdown:
                lines.append("")
        speed = rec.speedup_vs_reference
        frac = rec.floor_fraction
        is_floor = rec.impl == "floor"
        rows.append(
            [
                rec.mode if (rec.mode != last_mode or markdown) else "",
                rec.impl,
                _fmt_ms(rec.median_ms),
                "-" if is_floor else _fmt_ms(rec.p20_ms),
                "-" if is_floor else _fmt_ms(rec.p80_ms),
                f"{rec.gbps:.1f}",
                f"{100 * frac:.0f}%" if frac is not None else "-",
                f"{speed:.2f}x" if speed is not None else "-",
                _ops_text(rec),
            ]
        )
        last_mode = rec.mode
    flush()
    return "\n".join(lines).rstrip() + "\n"


def write_json(records: Iterable[Record], path: str) -> None:
    """Write the records as a JSON list (required fields first in each record)."""
    out = [rec.to_dict() for rec in _sorted(records)]
    _ensure_parent(path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


def _ensure_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def plot(records: Iterable[Record], path: str, title: str | None = None) -> None:
    """PNG chart: bars per impl per mode with the floor (one shape), or time vs size (sweeps)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    records = _sorted(records)
    shapes = sorted({_shape_key(r) for r in records})
    if not records:
        raise ValueError("no records to plot")
    if len(shapes) == 1:
        fig = _plot_bars(plt, records, title)
    else:
        fig = _plot_sweep(plt, records, title)
    _ensure_parent(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _plot_bars(plt, records, title):
    modes = [m for m in MODES if any(r.mode == m for r in records)]
    impls = [i for i in IMPLS if any(r.impl == i for r in records)]
    fig, ax = plt.subplots(figsize=(2.4 + 2.6 * len(modes), 4.2))
    width = 0.8 / max(len(impls), 1)
    for j, impl in enumerate(impls):
        xs, ys, lo, hi = [], [], [], []
        for i, mode in enumerate(modes):
            rec = next((r for r in records if r.impl == impl and r.mode == mode), None)
            if rec is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(rec.median_ms)
            lo.append(rec.median_ms - rec.p20_ms)
            hi.append(rec.p80_ms - rec.median_ms)
        bars = ax.bar(
            xs, ys, width * 0.92, yerr=[lo, hi], capsize=3, label=impl, color=_COLORS.get(impl)
        )
        for bar, y, h in zip(bars, ys, hi):
            ax.annotate(
                f"{y:.2f}",
                (bar.get_x() + bar.get_width() / 2, y + h),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=7,
            )
    floor_labelled = False
    for i, mode in enumerate(modes):
        rec = next((r for r in records if r.impl == "floor" and r.mode == mode), None)
        if rec is None:
            continue
        ax.hlines(
            rec.median_ms,
            i - 0.45,
            i + 0.45,
            colors="black",
            linestyles="--",
            linewidth=1.5,
            label=None if floor_labelled else "memory floor",
        )
        floor_labelled = True
    ax.set_xticks(range(len(modes)))
    ax.set_xticklabels([m.replace("_", "+") if m == "forward_backward" else m for m in modes])
    ax.set_ylabel("time per step (ms), median, p20-p80")
    b, t, m, dt, dev = _shape_key(records[0])
    ax.set_title(title or f"masked mel loss, [{b}, {t}, {m}] {dt} on {dev}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _plot_sweep(plt, records, title):
    modes = [m for m in MODES if any(r.mode == m for r in records)]
    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for impl in IMPLS + ("floor",):
            recs = [r for r in records if r.impl == impl and r.mode == mode]
            if not recs:
                continue
            pts = sorted(
                (r.batch * r.frames * r.mels * DTYPE_SIZES[r.dtype] / 1e6, r.median_ms)
                for r in recs
            )
            # Shapes of one size (8 x 1000 and 16 x 500, say) are each a point;
            # the line joins the median time of each size.
            by_size: dict[float, list[float]] = {}
            for size, ms in pts:
                by_size.setdefault(size, []).append(ms)
            sizes = sorted(by_size)
            ax.plot(
                sizes,
                [statistics.median(by_size[x]) for x in sizes],
                "--" if impl == "floor" else "-",
                color=_COLORS.get(impl),
                label="memory floor" if impl == "floor" else impl,
            )
            if impl != "floor":
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=_COLORS.get(impl))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("size of one [B, T, M] tensor (MB)")
        ax.set_ylabel("median time per step (ms)")
        ax.set_title(mode)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    r0 = records[0]
    fig.suptitle(title or f"masked mel loss sweep, {r0.mels} mels, {r0.dtype} on {r0.device}")
    fig.tight_layout()
    return fig
