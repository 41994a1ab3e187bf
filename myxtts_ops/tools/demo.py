"""``myxtts-ops demo``: XTTSLoss's adaptive mel weight on a small training run.

Trains a small Keras mel decoder (per-frame text embeddings -> 80 mel bins,
Dense layers) on synthetic data with a custom ``tf.GradientTape`` loop and
``XTTSLoss`` (adaptive weights on). Batches vary in
difficulty (clean and noisy "utterances"), so the loss moves around its running
mean the way real TTS losses do. Two faults are injected:

* one batch whose targets contain NaN inside the valid frames;
* one batch whose loss is about 50x the running loss.

Neither should move the weight. The run writes a PNG (mel loss, running mean,
window variance and mel weight over the steps, events marked) and prints a
summary.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from .loss_side import LossImportError, xtts_loss_class
from .profiler import ProfilerError, check_fused_available
from .tf_import import import_tensorflow

EMBED_DIM = 32
MELS = 80
GRAD_CLIP = 5.0


class DemoError(RuntimeError):
    """An error meant for the user: the CLI prints the message, no traceback."""


def _scalar(v) -> float:
    return float(np.asarray(v))


def _metrics(loss_fn) -> dict[str, float]:
    out = {}
    for getter in ("get_stability_metrics", "get_adaptive_weight_metrics"):
        for k, v in getattr(loss_fn, getter)().items():
            out[k] = _scalar(v)
    return out


def _event_steps(history: list[dict], key: str) -> list[int]:
    """Steps at which the cumulative counter ``key`` went up."""
    steps, prev = [], 0.0
    for h in history:
        v = h.get(key, 0.0)
        if v > prev:
            steps.append(h["step"])
        prev = v
    return steps


def run_demo(
    steps: int = 400,
    plot_path: str | None = "demo.png",
    json_path: str | None = None,
    implementation: str = "fused",
    batch: int = 16,
    frames: int = 200,
    seed: int = 0,
    nan_step: int | None = None,
    spike_step: int | None = None,
    spike_factor: float = 50.0,
    quiet: bool = False,
) -> dict:
    """Run the demo; returns a summary dict (also printed unless ``quiet``)."""
    if steps < 1:
        raise DemoError(f"steps must be >= 1, got {steps}")
    t_start = time.perf_counter()
    tf = import_tensorflow()
    try:
        XTTSLoss = xtts_loss_class()
    except LossImportError as exc:
        raise DemoError(str(exc)) from None
    if implementation == "fused":
        try:
            check_fused_available()
        except ProfilerError as exc:
            raise DemoError(
                str(exc).replace("--impls reference,xla", "--implementation reference")
            ) from None

    nan_step = nan_step if nan_step is not None else max(1, int(steps * 0.45))
    # Never the NaN step (a run of 1 or 2 steps has no room for both).
    spike_step = spike_step if spike_step is not None else max(nan_step + 1, int(steps * 0.7))
    if spike_step == nan_step:
        raise DemoError(f"nan_step and spike_step must differ, both are {nan_step}")

    keras = tf.keras
    keras.utils.set_random_seed(seed)  # Python, NumPy and TF seeds (initialisers)
    rng = np.random.default_rng(seed)

    # A fixed random "teacher" maps embeddings to mels; the student learns it.
    w1 = rng.standard_normal((EMBED_DIM, 64)).astype(np.float32) / np.sqrt(EMBED_DIM)
    w2 = rng.standard_normal((64, MELS)).astype(np.float32) / np.sqrt(64)
    mel_bias = np.linspace(-6.0, -1.0, MELS, dtype=np.float32)

    def make_batch(step_rng, noisy: bool):
        x = step_rng.standard_normal((batch, frames, EMBED_DIM)).astype(np.float32)
        mel = np.tanh(x @ w1) @ w2 * 2.0 + mel_bias
        noise = 0.9 if noisy else 0.15
        mel = mel + step_rng.standard_normal(mel.shape).astype(np.float32) * noise
        lengths = step_rng.integers(max(frames // 2, 1), frames + 1, size=(batch,)).astype(np.int32)
        # Padding holds garbage: it must not matter.
        for b, n in enumerate(lengths):
            mel[b, n:] = 1e4
        return x, mel.astype(np.float32), lengths

    model = keras.Sequential(
        [
            keras.Input((None, EMBED_DIM)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(MELS),
        ]
    )
    optimizer = keras.optimizers.Adam(learning_rate=2e-3)
    loss_fn = XTTSLoss(
        mel_loss_weight=2.5, use_adaptive_weights=True, implementation=implementation
    )

    @tf.function(reduce_retracing=True)
    def train_step(x, mel, lengths):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = loss_fn({"mel_target": mel, "mel_lengths": lengths}, {"mel_output": pred})
        grads = tape.gradient(loss, model.trainable_variables)
        grads = [
            tf.zeros_like(v) if g is None else g for g, v in zip(grads, model.trainable_variables)
        ]
        clipped, norm = tf.clip_by_global_norm(grads, GRAD_CLIP)
        finite = tf.math.is_finite(norm)
        clipped = [tf.where(finite, g, tf.zeros_like(g)) for g in clipped]
        optimizer.apply_gradients(zip(clipped, model.trainable_variables))
        loss_fn.observe_gradient_norm(norm)
        return loss, norm

    history: list[dict] = []
    prev_mel = None
    for step in range(1, steps + 1):
        noisy = bool(rng.random() < 0.5)
        x, mel, lengths = make_batch(rng, noisy)
        event = None
        if step == nan_step:
            mel[0, : max(1, frames // 10), :] = np.nan  # inside the valid frames
            event = "nan"
        elif step == spike_step:
            # Shift the targets so the L1 loss is about spike_factor x the recent loss.
            ref = history[-1]["running_mel_loss"] if history else float("nan")
            if not (np.isfinite(ref) and ref > 0):
                ref = prev_mel if prev_mel and np.isfinite(prev_mel) else 1.0
            mel = (mel + np.float32(spike_factor * ref)).astype(np.float32)
            for b, n in enumerate(lengths):
                mel[b, n:] = 1e4
            event = "spike"
        total, gnorm = train_step(tf.constant(x), tf.constant(mel), tf.constant(lengths))
        m = _metrics(loss_fn)
        total = _scalar(total)
        mel_loss = _scalar(loss_fn.get_losses()["mel_loss"])  # unweighted mel term of this call
        if event != "spike" and np.isfinite(mel_loss):
            prev_mel = mel_loss
        history.append(
            dict(
                step=step,
                total_loss=total,
                mel_loss=mel_loss,
                grad_norm=_scalar(gnorm),
                noisy_batch=noisy,
                event=event,
                **m,
            )
        )

    elapsed = time.perf_counter() - t_start
    summary = _summarize(history, elapsed, implementation, nan_step, spike_step, spike_factor)
    summary["variance_threshold"] = float(loss_fn.config.adaptive_weight_variance_threshold)
    if not quiet:
        print(_format_summary(summary))
    if plot_path:
        plot_demo(history, summary, plot_path)
        if not quiet:
            print(f"wrote {plot_path}")
    if json_path:
        parent = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(parent, exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "history": history}, f, indent=1, default=float)
        if not quiet:
            print(f"wrote {json_path}")
    summary["history"] = history
    return summary


def _summarize(history, elapsed, implementation, nan_step, spike_step, spike_factor) -> dict:
    changes = _event_steps(history, "weight_changes")
    weights = {h["step"]: h["current_mel_weight"] for h in history}
    change_list = []
    for s in changes:
        before = weights.get(s - 1, history[0].get("base_mel_weight", float("nan")))
        after = weights[s]
        change_list.append(
            dict(step=s, before=before, after=after, direction="up" if after > before else "down")
        )

    def weight_moved_at(step):
        return step in changes

    # The summary's means leave out the steps the demo injects (the NaN batch
    # and the spike): they say how training went, not what was injected.
    clean = [h for h in history if h["step"] not in (nan_step, spike_step)] or history
    first = clean[: min(10, len(clean))]
    last = clean[-min(10, len(clean)) :]
    return dict(
        steps=len(history),
        seconds=elapsed,
        implementation=implementation,
        first_mel_loss=float(np.nanmean([h["mel_loss"] for h in first])),
        last_mel_loss=float(np.nanmean([h["mel_loss"] for h in last])),
        base_weight=history[0].get("base_mel_weight", float("nan")),
        final_weight=history[-1].get("current_mel_weight", float("nan")),
        weight_changes=change_list,
        rejected_changes=int(history[-1].get("rejected_changes", 0)),
        rejected_steps=_event_steps(history, "rejected_changes"),
        nonfinite_steps=_event_steps(history, "nonfinite_steps"),
        spike_steps=_event_steps(history, "spike_count"),
        nan_injected_step=nan_step if nan_step <= len(history) else None,
        spike_injected_step=spike_step if spike_step <= len(history) else None,
        spike_factor=spike_factor,
        weight_moved_on_nan=weight_moved_at(nan_step),
        weight_moved_on_spike=weight_moved_at(spike_step),
    )


def _format_summary(s: dict) -> str:
    lines = [
        f"demo: {s['steps']} steps in {s['seconds']:.1f} s "
        f"(XTTSLoss, implementation={s['implementation']}, adaptive weights on)",
        f"  mel loss: {s['first_mel_loss']:.4f} (first 10 steps) -> "
        f"{s['last_mel_loss']:.4f} (last 10 steps; injected steps left out)",
    ]
    ch = s["weight_changes"]
    desc = ", ".join(f"{c['step']} ({c['direction']} to {c['after']:.4f})" for c in ch) or "none"
    lines.append(
        f"  mel weight: {s['base_weight']:.4f} (base) -> {s['final_weight']:.4f}; "
        f"{len(ch)} change(s) at step {desc}"
    )
    lines.append(
        f"  rejected weight changes: {s['rejected_changes']}"
        + (f" (steps {', '.join(map(str, s['rejected_steps']))})" if s["rejected_steps"] else "")
    )
    if s["nan_injected_step"] is not None:
        lines.append(
            f"  NaN targets injected at step {s['nan_injected_step']}: "
            f"non-finite steps counted at {s['nonfinite_steps'] or 'none'}; weight "
            + ("CHANGED" if s["weight_moved_on_nan"] else "unchanged")
        )
    else:
        lines.append(f"  non-finite steps: {s['nonfinite_steps'] or 'none'}")
    if s["spike_injected_step"] is not None:
        lines.append(
            f"  {s['spike_factor']:.0f}x loss spike injected at step {s['spike_injected_step']}: "
            f"spikes counted at {s['spike_steps'] or 'none'}; weight "
            + ("CHANGED" if s["weight_moved_on_spike"] else "unchanged")
        )
    else:
        lines.append(f"  loss spikes: {s['spike_steps'] or 'none'}")
    return "\n".join(lines)


def plot_demo(history: list[dict], summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history])

    def col(key):
        return np.array([h.get(key, np.nan) for h in history], dtype=np.float64)

    fig, axes = plt.subplots(
        3, 1, figsize=(10, 8), sharex=True, gridspec_kw=dict(height_ratios=[2.2, 1, 1.2])
    )
    ax = axes[0]
    ax.plot(
        steps,
        col("running_mel_loss"),
        lw=1.4,
        color="#d62728",
        zorder=2,
        label="running mean (op state)",
    )
    ax.plot(
        steps, col("mel_loss"), ".", ms=2.5, color="#1f77b4", zorder=3, label="mel loss (per step)"
    )
    ax.set_yscale("log")
    ax.set_ylabel("mel loss (L1)")
    ax.legend(loc="upper right", fontsize=8)
    axes[1].plot(steps, col("mel_window_variance"), color="#9467bd")
    threshold = summary["variance_threshold"]
    axes[1].axhline(threshold, color="gray", ls=":", lw=1, label=f"gate threshold ({threshold})")
    axes[1].set_yscale("symlog", linthresh=1e-2)
    axes[1].set_ylim(bottom=0)
    axes[1].set_ylabel("window variance\n(last 10 clean steps)")
    axes[1].legend(loc="upper left", fontsize=8)
    axes[2].step(steps, col("current_mel_weight"), where="post", color="#2ca02c", lw=1.8)
    axes[2].axhline(summary["base_weight"], color="gray", ls=":", lw=1, label="base weight")
    axes[2].set_ylabel("mel weight")
    axes[2].set_xlabel("training step")
    axes[2].legend(loc="lower left", fontsize=8)

    events = []
    if summary["nan_injected_step"] is not None:
        events.append((summary["nan_injected_step"], "NaN targets", "red", "-"))
    if summary["spike_injected_step"] is not None:
        events.append(
            (
                summary["spike_injected_step"],
                f"{summary['spike_factor']:.0f}x loss spike",
                "darkorange",
                "-",
            )
        )
    for c in summary["weight_changes"]:
        events.append((c["step"], f"weight {c['direction']}", "green", "--"))
    for s in summary["rejected_steps"]:
        events.append((s, "rejected change", "gray", ":"))
    for a in axes:
        for s, _, color, ls in events:
            a.axvline(s, color=color, ls=ls, lw=1, alpha=0.7)
        a.grid(alpha=0.3)
    # Injected faults are labelled on the loss panel, weight decisions on the weight panel.
    for s, label, color, _ in events:
        ax = axes[0] if color in ("red", "darkorange") else axes[2]
        ax.annotate(
            label,
            (s, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -3),
            textcoords="offset points",
            rotation=90,
            va="top",
            fontsize=7,
            color=color,
        )
    fig.suptitle(
        f"XTTSLoss adaptive mel weight on a small mel decoder "
        f"({summary['steps']} steps, {summary['implementation']})"
    )
    fig.tight_layout()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
