"""XTTSLoss as a drop-in for MyXTTS's loss (notes/MYXTTS_COMPAT.md, issue 10).

* a MyXTTS-style training step: a small Keras model with every head of the
  default MyXTTS model, inputs built as the contract's section 2 says, the
  loss built with exactly the trainer's 13 keyword arguments, 300 steps under
  ``tf.function(jit_compile=True)`` differentiating ``get_raw_total_loss()``;
* the behaviours the original's own test files check, through the contract's names;
* the import with a different ``myxtts`` package first on ``sys.path``.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from myxtts_loss import XTTSLoss, create_stop_targets
from myxtts_loss.config import MYXTTS_TRAINER_ARGS

B, T, M, U, H, VOCAB = 4, 12, 6, 5, 2, 11
MAX_DURATION_FRAMES = 30.0

#: What the trainer passes (contract section 1, with MyXTTS's config defaults).
TRAINER_KWARGS = dict(
    mel_loss_weight=2.5,
    stop_loss_weight=1.0,
    attention_loss_weight=0.02,
    duration_loss_weight=0.1,
    pitch_loss_weight=0.1,
    energy_loss_weight=0.1,
    prosody_pitch_loss_weight=0.05,
    prosody_energy_loss_weight=0.05,
    speaking_rate_loss_weight=0.05,
    use_adaptive_weights=True,
    loss_smoothing_factor=0.1,
    max_loss_spike_threshold=2.0,
    gradient_norm_threshold=5.0,
)
DEFAULT_MODEL_TERMS = [
    "mel_loss",
    "stop_loss",
    "attention_loss",
    "duration_loss",
    "pitch_loss",
    "energy_loss",
    "prosody_pitch_loss",
    "prosody_energy_loss",
    "speaking_rate_loss",
    "gradient_participation_loss",
]


class TinyXTTS(keras.Model):
    """Every training head of the default MyXTTS model, tiny."""

    def __init__(self):
        super().__init__()
        self.embed = keras.layers.Embedding(VOCAB, 8)
        self.frame_in = keras.layers.Dense(8)
        self.query = keras.layers.Dense(H * 4)
        self.key = keras.layers.Dense(H * 4)
        self.mel_head = keras.layers.Dense(M)
        self.stop_head = keras.layers.Dense(1, activation="sigmoid")
        self.pitch_head = keras.layers.Dense(1)
        self.energy_head = keras.layers.Dense(1)
        self.duration_head = keras.layers.Dense(1, activation="relu", bias_initializer="ones")
        self.prosody_pitch_head = keras.layers.Dense(1)
        self.prosody_energy_head = keras.layers.Dense(1)
        self.rate_head = keras.layers.Dense(1)

    def call(self, inputs):
        tokens, mel_in = inputs
        text = self.embed(tokens)  # [B, U, 8]
        frames = self.frame_in(mel_in)  # [B, T, 8]
        q = tf.reshape(self.query(frames), [B, T, H, 4])
        k = tf.reshape(self.key(text), [B, U, H, 4])
        att = tf.nn.softmax(tf.einsum("bthd,buhd->bhtu", q, k), axis=-1)  # [B, H, T, U]
        context = tf.einsum("bhtu,bud->btd", att, text) / H
        h = tf.nn.tanh(frames + context)
        return {
            "mel_output": self.mel_head(h),
            "stop_tokens": self.stop_head(h),
            "attention_weights": att,
            "duration_pred": tf.squeeze(self.duration_head(text), -1),
            "pitch_output": self.pitch_head(h),
            "energy_output": self.energy_head(h),
            "prosody_pitch": self.prosody_pitch_head(text),
            "prosody_energy": self.prosody_energy_head(text),
            "prosody_speaking_rate": self.rate_head(text),
        }


def build_targets(mel, mel_lengths, text_lengths):
    """y_true as the MyXTTS trainer builds it (contract section 2, T 735-822); lengths float32
    as Keras delivers them."""
    mel = tf.constant(mel)
    lm = tf.constant(mel_lengths, tf.int32)
    lx = tf.constant(text_lengths, tf.int32)
    mel_mask = tf.sequence_mask(lm, T, tf.float32)
    text_mask = tf.sequence_mask(lx, U, tf.float32)
    ratio = tf.cast(lm, tf.float32) / tf.cast(tf.maximum(lx, 1), tf.float32)
    duration = tf.clip_by_value(ratio, 0.0, MAX_DURATION_FRAMES)[:, None] * text_mask
    pitch = tf.cast(tf.argmax(mel**2, axis=-1), tf.float32) / max(M - 1, 1) * mel_mask
    energy = tf.reduce_mean(tf.abs(mel), axis=-1) * mel_mask
    resize = lambda x: tf.image.resize(x[:, :, None, None], [U, 1], "bilinear")[:, :, 0, 0]  # noqa: E731
    return {
        "mel_target": mel,
        "stop_target": create_stop_targets(lm, T),
        "mel_lengths": tf.cast(lm, tf.float32),
        "text_lengths": tf.cast(lx, tf.float32),
        "duration_target": duration,
        "pitch_target": pitch[..., None],
        "energy_target": energy[..., None],
        "prosody_pitch_target": (resize(pitch) * text_mask)[..., None],
        "prosody_energy_target": (resize(energy) * text_mask)[..., None],
        "prosody_speaking_rate_target": (ratio[:, None] * text_mask)[..., None],
    }


def _batches(rng):
    """Two batches of different difficulty, alternated (so the mel loss ratio moves)."""
    out = []
    for scale in (0.3, 1.5):
        mel = (rng.standard_normal((B, T, M)) * scale).astype(np.float32)
        lm = rng.integers(T // 2, T + 1, B)
        lm[0] = T
        lx = rng.integers(2, U + 1, B)
        tokens = rng.integers(0, VOCAB, (B, U)).astype(np.int32)
        mel_in = np.concatenate([np.zeros((B, 1, M), np.float32), mel[:, :-1]], axis=1)
        out.append(((tf.constant(tokens), tf.constant(mel_in)), build_targets(mel, lm, lx)))
    return out


def test_trainer_step_300_steps_under_xla(rng):
    import test_xtts_loss as spec  # the SPEC 4.1 oracle

    assert set(TRAINER_KWARGS) == set(MYXTTS_TRAINER_ARGS)
    model = TinyXTTS()
    loss_fn = XTTSLoss(**TRAINER_KWARGS)
    opt = keras.optimizers.Adam(1e-2, global_clipnorm=1.0)
    batches = _batches(rng)
    model(batches[0][0])
    opt.build(model.trainable_variables)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def train_step(x, y_true):
        with tf.GradientTape() as tape:
            y_pred = model(x)
            returned = loss_fn(y_true, y_pred)
            raw = loss_fn.get_raw_total_loss()  # what MyXTTS differentiates
        grads = tape.gradient(raw, model.trainable_variables)
        present = [g is not None for g in grads]
        grads = [
            tf.zeros_like(v) if g is None else g for g, v in zip(grads, model.trainable_variables)
        ]
        norm = tf.linalg.global_norm(grads)
        clipped, _ = tf.clip_by_global_norm(grads, 0.5)
        opt.apply_gradients(zip(clipped, model.trainable_variables))
        nonzero = [tf.reduce_any(tf.not_equal(g, 0.0)) for g in grads]
        return (
            returned,
            raw,
            norm,
            present,
            nonzero,
            loss_fn.get_losses(),
            loss_fn.get_weighted_losses(),
        )

    seen_nonzero = np.zeros(len(model.trainable_variables), bool)
    mels, totals, weights, others, stops = [], [], [], [], []
    for step in range(300):
        x, y = batches[step % 2]
        returned, raw, norm, present, nonzero, losses, weighted = train_step(x, y)
        assert all(bool(p) for p in present)
        seen_nonzero |= np.array([bool(n) for n in nonzero])
        assert float(returned) == float(raw) and np.isfinite(float(norm))
        stops.append(float(losses["stop_loss"]))
        mel = float(losses["mel_loss"])
        w = float(weighted["mel_weight"])
        mels.append(mel)
        weights.append(w)
        totals.append(float(returned))
        others.append(float(returned) - np.float32(w) * np.float32(mel))
    assert train_step.experimental_get_tracing_count() == 1
    # Inside the step the getters list the keys they list eagerly (contract 9).
    assert set(losses) == set(DEFAULT_MODEL_TERMS)
    assert seen_nonzero.all(), [
        v.path for v, s in zip(model.trainable_variables, seen_nonzero) if not s
    ]
    # Training works on every head that matters here (same batch: steps 0 and 298).
    assert stops[298] < stops[0], (stops[0], stops[298])
    assert mels[298] < mels[0] and totals[298] < totals[0]

    # Trainer-facing surface after the run (eager reads, as T 890-990 does).
    losses = loss_fn.get_losses()
    assert list(losses) == DEFAULT_MODEL_TERMS
    weighted = loss_fn.get_weighted_losses()
    assert list(weighted) == ["mel_loss", "mel_weight"] + DEFAULT_MODEL_TERMS[1:] + [
        "raw_total_loss"
    ]
    losses["gradient_norm"] = 1.0  # the trainer mutates the dict it gets: a copy
    assert "gradient_norm" not in loss_fn.get_losses()
    for d in (
        losses,
        weighted,
        loss_fn.get_stability_metrics(),
        loss_fn.get_adaptive_weight_metrics(),
    ):
        for k, v in d.items():
            assert isinstance(f"{v:.4f}", str) and np.isfinite(float(v)), k
    assert float(loss_fn.get_raw_total_loss()) == pytest.approx(totals[-1], rel=1e-6)
    assert float(loss_fn.get_losses()["gradient_participation_loss"]) == 0.0
    for name in MYXTTS_TRAINER_ARGS:
        if name.endswith("_weight"):
            assert float(getattr(loss_fn, name)) == TRAINER_KWARGS[name]
    assert float(loss_fn.voice_similarity_loss_weight) == 1.0
    assert int(loss_fn.step_count.numpy()) == 300

    # The weight moves by the rules: the SPEC 4.1 oracle fed with the same mel losses
    # and other terms gives the same trajectory, with at least one change.
    oracle = spec.Oracle(loss_fn.config)
    oracle_w = [oracle.step(L, other=o) for L, o in zip(mels, others)]
    np.testing.assert_allclose(weights, oracle_w, rtol=1e-5)
    changes = [i + 1 for i in range(1, 300) if weights[i] != weights[i - 1]]
    assert changes and changes[0] >= 109
    assert all(b - a >= 59 for a, b in zip(changes, changes[1:]))


def test_validation_switch_and_eager_trainer_calls(rng):
    """Validation (eager, T 1669-1692) passes only mel/stop plus the lengths; with the switch
    the training state stays put, and get_losses()/get_raw_total_loss() describe that call."""
    model = TinyXTTS()
    loss_fn = XTTSLoss(**TRAINER_KWARGS)
    (x, y), _ = _batches(rng)
    y_pred = model(x)
    loss_fn(y, y_pred)
    before = [v.numpy() for v in loss_fn.training_state_variables]
    y_val = {k: y[k] for k in ("mel_target", "stop_target", "mel_lengths", "text_lengths")}
    p_val = {k: y_pred[k] for k in ("mel_output", "stop_tokens")}
    with loss_fn.validation():
        value = loss_fn(y_val, p_val)
    assert list(loss_fn.get_losses()) == ["mel_loss", "stop_loss", "gradient_participation_loss"]
    assert float(loss_fn.get_raw_total_loss()) == float(value)
    for v, b in zip(loss_fn.training_state_variables, before):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.name)
    loss_fn(y_val, p_val)  # default: a training call moves the state
    assert int(loss_fn.step_count.numpy()) == 2


def test_raw_total_after_graph_calls_and_restores_is_the_latest_call(tmp_path):
    """Eagerly, get_raw_total_loss() is the latest call's total: a call from a
    tf.function after an eager one, or a checkpoint restore, makes the eager
    call's tensor stale, and the restored (or graph) value is returned."""
    loss_fn = XTTSLoss()
    step = tf.function(lambda yt, yp: loss_fn(yt, yp))
    step(*_mel_pair(0.1))  # traced once, before the eager call
    eager = loss_fn(*_mel_pair(0.2))
    assert loss_fn.get_raw_total_loss() is eager  # the differentiable tensor itself
    graph = float(step(*_mel_pair(0.3)))  # no retrace: the eager tensor is stale now
    assert float(loss_fn.get_raw_total_loss()) == graph != float(eager)
    ckpt = tf.train.Checkpoint(loss=loss_fn)
    path = ckpt.write(str(tmp_path / "ckpt"))
    later = loss_fn(*_mel_pair(0.4))
    assert loss_fn.get_raw_total_loss() is later
    ckpt.read(path).assert_consumed()
    assert float(loss_fn.get_raw_total_loss()) == graph
    again = loss_fn(*_mel_pair(0.5))  # the next eager call is returned again
    assert loss_fn.get_raw_total_loss() is again
    ckpt.read(path)  # the same count and total as saved: the saved value, whichever way
    assert float(loss_fn.get_raw_total_loss()) == graph


# ------------------------------------------- the original's own test behaviours
def _mel_pair(value, b=2, t=8, m=4):
    return (
        {"mel_target": tf.zeros([b, t, m]), "mel_lengths": tf.constant([t, t - 2])},
        {"mel_output": tf.fill([b, t, m], value)},
    )


def test_spike_detection_and_smoothing():
    loss_fn = XTTSLoss()
    for _ in range(30):
        loss_fn(*_mel_pair(0.5))
    raw = loss_fn(*_mel_pair(25.0))  # 50x spike
    st = loss_fn.get_stability_metrics()
    assert int(st["spike_count"]) == 1
    assert float(raw) == pytest.approx(2.5 * 25.0)  # the raw total is returned, undamped
    smoothed = float(loss_fn.get_smoothed_total_loss())
    assert smoothed < float(raw) / 2 and smoothed == float(st["smoothed_total_loss"])


def test_nan_prevention_200_steps(rng):
    loss_fn = XTTSLoss()
    step = tf.function(lambda yt, yp: loss_fn(yt, yp))
    for i in range(200):
        yt, yp = _mel_pair(float(rng.uniform(0.2, 2.0)))
        if i % 17 == 0:
            yp = {
                "mel_output": tf.tensor_scatter_nd_update(yp["mel_output"], [[0, 1, 1]], [np.nan])
            }
        assert np.isfinite(float(step(yt, yp)))
    for v in list(loss_fn.get_stability_metrics().values()) + list(
        loss_fn.get_adaptive_weight_metrics().values()
    ):
        assert np.isfinite(float(v))
    assert int(loss_fn.get_stability_metrics()["nonfinite_steps"]) == len(range(0, 200, 17))


def test_all_nonfinite_mel_batch_is_visible(rng):
    loss_fn = XTTSLoss()
    loss_fn(*_mel_pair(0.5))
    yt, _ = _mel_pair(0.5)
    value = loss_fn(yt, {"mel_output": tf.fill([2, 8, 4], np.nan)})
    assert float(value) == 0.0
    with pytest.warns(RuntimeWarning, match="all non-finite"):
        st = loss_fn.get_stability_metrics()
    assert int(st["all_nonfinite_mel_steps"]) == 1
    from myxtts_loss.callbacks import XTTSLossMonitor

    logs = {}
    XTTSLossMonitor(loss_fn).on_epoch_end(0, logs)
    assert logs["xtts_all_nonfinite_mel_steps"] == 1.0


def test_metrics_formatting_disable_enable_reset_cooling_and_gradient_history():
    loss_fn = XTTSLoss()
    assert not hasattr(loss_fn, "losses") and loss_fn.get_losses() == {}
    assert loss_fn.get_raw_total_loss() is None
    weights = []
    for s in range(1, 200):
        loss_fn(*_mel_pair(0.3 if s % 2 else 1.0))
        weights.append(float(loss_fn.current_mel_weight.numpy()))
        loss_fn.observe_gradient_norm(1.0 + 0.01 * s)
    assert hasattr(loss_fn, "losses")
    m = loss_fn.get_adaptive_weight_metrics()
    for v in m.values():
        assert isinstance(f"{v:.4f}", str)
    changes = [i + 1 for i in range(1, len(weights)) if weights[i] != weights[i - 1]]
    assert changes[0] == 109 and changes[1] - changes[0] >= 59  # cooling
    hist = loss_fn.gradient_norm_history().numpy()
    np.testing.assert_allclose(hist, [1.0 + 0.01 * s for s in range(189, 200)], rtol=1e-6)
    loss_fn.disable_adaptive_weights()
    assert float(loss_fn.get_adaptive_weight_metrics()["current_mel_weight"]) == 2.5
    loss_fn(*_mel_pair(1.0))
    assert float(loss_fn.current_mel_weight.numpy()) == 2.5
    loss_fn.reset_stability_state()
    assert loss_fn.get_raw_total_loss() is None and loss_fn.get_losses() == {}
    assert float(loss_fn.get_adaptive_weight_metrics()["weight_adjustment_enabled"]) == 0.0
    loss_fn.enable_adaptive_weights()
    assert float(loss_fn.get_adaptive_weight_metrics()["weight_adjustment_enabled"]) == 1.0
    assert int(loss_fn.step_count.numpy()) == 0


def test_all_18_constructor_arguments_and_module_functions():
    import myxtts_loss

    loss_fn = XTTSLoss(
        2.0,
        1.0,
        0.1,
        0.1,
        0.1,
        0.1,
        0.05,
        0.05,
        0.05,
        3.0,
        0.5,
        True,
        0.1,
        2.0,
        5.0,
        0.2,
        0.3,
        "custom",
    )
    assert loss_fn.name == "custom" and loss_fn.voice_similarity_loss_weight == 3.0
    assert loss_fn.contrastive_loss.temperature == pytest.approx(0.2)
    assert isinstance(loss_fn.mel_loss_weight, float)
    for name in (
        "create_stop_targets",
        "mel_loss",
        "stop_token_loss",
        "attention_loss",
        "duration_loss",
        "pitch_loss",
        "energy_loss",
        "diffusion_loss",
        "speaking_rate_loss",
        "compute_mel_statistics",
        "ContrastiveSpeakerLoss",
    ):
        assert callable(getattr(myxtts_loss, name))
    from myxtts.training.losses import XTTSLoss as Seed  # noqa: F401

    assert Seed is XTTSLoss
    # Contract section 6: MyXTTS's myxtts/training/__init__.py exports these three.
    import myxtts.training

    for name in ("XTTSLoss", "mel_loss", "stop_token_loss"):
        assert name in myxtts.training.__all__
        assert getattr(myxtts.training, name) is getattr(myxtts_loss, name)


def test_stop_tokens_are_probabilities_by_default(rng):
    lm = np.array([5, 3])
    yt = {
        "mel_target": np.zeros((2, 5, 2), np.float32),
        "mel_lengths": lm,
        "stop_target": create_stop_targets(lm, 5),
    }
    p = rng.uniform(0.05, 0.95, (2, 5, 1)).astype(np.float32)
    probs = XTTSLoss()
    probs(yt, {"mel_output": np.zeros((2, 5, 2), np.float32), "stop_tokens": p})
    logits = XTTSLoss(stop_from_logits=True)
    logits(yt, {"mel_output": np.zeros((2, 5, 2), np.float32), "stop_tokens": np.log(p / (1 - p))})
    np.testing.assert_allclose(
        float(probs.get_losses()["stop_loss"]), float(logits.get_losses()["stop_loss"]), rtol=1e-4
    )


# ----------------------------------------------------------- shadow-proof import
def test_import_with_a_different_myxtts_first_on_path(tmp_path):
    fake = tmp_path / "checkout" / "myxtts" / "training"
    fake.mkdir(parents=True)
    (tmp_path / "checkout" / "myxtts" / "__init__.py").write_text("IS_MYXTTS_CHECKOUT = True\n")
    (fake / "__init__.py").write_text("")
    (fake / "losses.py").write_text("raise ImportError('the checkout loss must not be imported')\n")
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import myxtts
        assert getattr(myxtts, "IS_MYXTTS_CHECKOUT", False), myxtts.__file__
        from myxtts_loss import XTTSLoss, create_stop_targets, mel_loss, stop_token_loss
        loss = XTTSLoss(mel_loss_weight=2.5, stop_loss_weight=1.0, attention_loss_weight=0.02)
        import numpy as np
        v = loss({"mel_target": np.zeros((1, 3, 2), np.float32)},
                 {"mel_output": np.ones((1, 3, 2), np.float32)})
        assert abs(float(v) - 2.5) < 1e-6, float(v)
        assert "myxtts.training.losses" not in sys.modules
        assert all(not m.startswith("myxtts.") for m in sys.modules), sorted(
            m for m in sys.modules if m.startswith("myxtts."))
        print("OK")
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "checkout")],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
