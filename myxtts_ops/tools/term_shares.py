"""Each XTTSLoss term's share of a training step: ``myxtts-ops profile --terms``
and ``benchmarks/xtts_terms_bench.py``.

The inputs are what the MyXTTS trainer builds (every head of its default model,
attention weights ``[B, heads, frames, tokens]``). Each term runs alone through
``XTTSLoss.term_functions`` with its gradient with respect to every prediction,
inside one ``tf.function`` over several input sets; the same function without
the loss is subtracted. The graphs are called in turn, so load changes on a
shared machine hit them alike.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf

from .loss_side import xtts_loss_class
from .measure import percentiles_ms
from .workloads import DEFAULT_HEADS, DEFAULT_TOKENS


def myxtts_inputs(rng, sets, batch, frames, mels, tokens, heads, all_heads=True):
    """``sets`` (y_true, y_pred) dicts of tensors as the MyXTTS trainer builds them
    (lengths as float32, as Keras delivers them); mel + stop only unless ``all_heads``."""
    out = []
    for _ in range(sets):
        lm = rng.integers(frames // 2, frames + 1, batch)
        lx = rng.integers(tokens // 2, tokens + 1, batch)
        yt = {
            "mel_target": tf.constant(rng.standard_normal((batch, frames, mels), dtype=np.float32)),
            "mel_lengths": tf.constant(lm.astype(np.float32)),
            "stop_target": tf.constant(
                (np.arange(frames)[None, :, None] == (lm[:, None, None] - 1)).astype(np.float32)
            ),
        }
        yp = {
            "mel_output": tf.constant(rng.standard_normal((batch, frames, mels), dtype=np.float32)),
            "stop_tokens": tf.constant(
                rng.uniform(0.01, 0.99, (batch, frames, 1)).astype(np.float32)
            ),
        }
        if all_heads:
            logits = rng.standard_normal((batch, heads, frames, tokens), dtype=np.float32)
            att = np.exp(logits - logits.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)

            def normal(*shape):
                return tf.constant(rng.standard_normal(shape, dtype=np.float32))

            yt.update(
                text_lengths=tf.constant(lx.astype(np.float32)),
                duration_target=tf.constant(rng.uniform(0, 8, (batch, tokens)).astype(np.float32)),
                pitch_target=normal(batch, frames, 1),
                energy_target=normal(batch, frames, 1),
                prosody_pitch_target=normal(batch, tokens, 1),
                prosody_energy_target=normal(batch, tokens, 1),
                prosody_speaking_rate_target=normal(batch, tokens, 1),
            )
            yp.update(
                attention_weights=tf.constant(att),
                duration_pred=tf.constant(rng.uniform(0, 8, (batch, tokens)).astype(np.float32)),
                pitch_output=normal(batch, frames, 1),
                energy_output=normal(batch, frames, 1),
                prosody_pitch=normal(batch, tokens, 1),
                prosody_energy=normal(batch, tokens, 1),
                prosody_speaking_rate=normal(batch, tokens, 1),
            )
        out.append((yt, yp))
    return out


def step_graph(step, inputs, jit_compile=False):
    """One ``tf.function`` running ``step(k, y_true, y_pred)`` on every input set
    (compiled with XLA when ``jit_compile``, as the MyXTTS trainer's step is by default)."""

    def run():
        total = tf.zeros([])
        for k, (yt, yp) in enumerate(inputs):
            total += step(k, yt, yp)
        return total

    return tf.function(run, jit_compile=jit_compile)


def forward_backward(value_fn, y_pred):
    """``value_fn(preds)`` and its gradient with respect to every prediction,
    folded into one scalar so that nothing is pruned."""
    preds = dict(y_pred)
    with tf.GradientTape() as tape:
        for v in preds.values():
            tape.watch(v)
        value = value_fn(preds)
    probe = value
    for g in tape.gradient(value, list(preds.values())):
        if g is not None:
            probe = probe + tf.reshape(g, [-1])[0]
    return probe


def interleaved_seconds(graphs, repeats):
    """{name: [seconds per call]}: each graph called once per round, in turn."""
    for g in graphs.values():
        g()  # trace + warm up
    times = {k: [] for k in graphs}
    for _ in range(repeats):
        for k, g in graphs.items():
            t0 = time.perf_counter()
            g().numpy()
            times[k].append(time.perf_counter() - t0)
    return times


@dataclasses.dataclass
class TermShare:
    """One term alone, forward + backward, per step (p20/p80 over the rounds)."""

    term: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    share: float  # of the whole XTTSLoss step's median


def _time_terms(rng, batch, frames, mels, tokens, heads, repeats, sets, tf_device, implementation):
    with tf.device(tf_device):
        inputs = myxtts_inputs(rng, sets, batch, frames, mels, tokens, heads)
        loss_fn = xtts_loss_class()(implementation=implementation)

        def baseline(k, yt, yp):
            return yt["mel_target"][0, 0, 0] + yp["mel_output"][0, 0, 0]

        graphs = {
            "base": step_graph(baseline, inputs),
            "xtts": step_graph(
                lambda k, yt, yp: forward_backward(lambda p: loss_fn(yt, p), yp), inputs
            ),
        }
        for name in loss_fn.term_functions(*inputs[0]):

            def term_step(k, yt, yp, name=name):
                return forward_backward(lambda p: loss_fn.term_functions(yt, p)[name](), yp)

            graphs[name] = step_graph(term_step, inputs)
        return interleaved_seconds(graphs, repeats)


def measure_term_shares(
    batch,
    frames,
    mels,
    tokens=DEFAULT_TOKENS,
    heads=DEFAULT_HEADS,
    repeats=10,
    sets=2,
    seed=0,
    tf_device=None,
    implementation="fused",
):
    """(whole XTTSLoss step ms, [TermShare]) with every head of the default model
    (``implementation``: XTTSLoss's, the fused op or the pure-TF reference)."""
    rng = np.random.default_rng(seed)
    logger = tf.get_logger()
    level = logger.level
    # One tf.function per term, each traced once: not the retracing TF warns of.
    logger.setLevel("ERROR")
    try:
        times = _time_terms(
            rng, batch, frames, mels, tokens, heads, repeats, sets, tf_device, implementation
        )
    finally:
        logger.setLevel(level)
    base = np.asarray(times.pop("base"))
    per_step = {k: (np.asarray(v) - base) / sets for k, v in times.items()}
    whole_ms = float(np.median(per_step.pop("xtts"))) * 1e3
    shares = []
    for name, seconds in per_step.items():
        med, p20, p80 = percentiles_ms(list(seconds))
        shares.append(TermShare(name, med, p20, p80, med / whole_ms if whole_ms > 0 else 0.0))
    return whole_ms, shares


def format_term_table(whole_ms, shares, batch, frames, mels, tokens, heads):
    lines = [
        f"XTTSLoss terms, every head of the default MyXTTS model: mel [{batch}, {frames}, {mels}], "
        f"attention [{batch}, {heads}, {frames}, {tokens}]; whole loss {whole_ms:.3f} ms per step "
        "(forward + backward)",
        f"{'term':<28}  {'median ms':>9}  {'p20 ms':>7}  {'p80 ms':>7}  {'share':>6}",
    ]
    for s in shares:
        if s.median_ms <= 0:
            # Less than the baseline graph (which reads one element of each of
            # two inputs) costs: below what the subtraction resolves.
            median, share = f"{'< noise':>9}", f"{'-':>6}"
        else:
            median, share = f"{s.median_ms:9.3f}", f"{100 * s.share:5.1f}%"
        lines.append(f"{s.term:<28}  {median}  {s.p20_ms:7.3f}  {s.p80_ms:7.3f}  {share}")
    return "\n".join(lines) + "\n"
