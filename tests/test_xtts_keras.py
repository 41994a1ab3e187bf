"""XTTSLoss in Keras: model.compile + fit with dict (MyXTTS) and plain outputs,
gradient-norm feeding, mixed precision, XLA, callbacks."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from myxtts.training import XTTSLoss, XTTSLossMonitor, XTTSModel, XTTSModelMixin, feed_gradient_norm
from myxtts.training.callbacks import write_loss_summaries
from myxtts.training.gradient_norm import innermost_optimizer


def _fused_available():
    try:
        import myxtts_ops

        myxtts_ops.load_ops()
        return True
    except Exception:  # noqa: BLE001
        return False


IMPL = "fused" if _fused_available() else "reference"
N, T, D, M, BATCH, EPOCHS = 32, 12, 6, 8, 8, 3
STEPS = N // BATCH


@pytest.fixture
def data(rng):
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    proj = rng.standard_normal((D, M)).astype(np.float32)
    mel = (x @ proj + 0.05 * rng.standard_normal((N, T, M))).astype(np.float32)
    lens = rng.integers(3, T + 1, N).astype(np.int32)
    stop = (np.arange(T)[None, :] >= (lens[:, None] - 1)).astype(np.float32)
    return x, {"mel_target": mel, "mel_lengths": lens, "stop_target": stop}


def _dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


def _functional_decoder(mel_dtype=None):
    inp = keras.Input((T, D))
    h = keras.layers.Dense(16, activation="relu")(inp)
    mel = keras.layers.Dense(M, name="mel", dtype=mel_dtype)(h)
    # MyXTTS's stop head: sigmoid probabilities (XTTSLoss's default input).
    stop = keras.layers.Dense(1, name="stop", activation="sigmoid", dtype="float32")(h)
    return XTTSModel(inp, {"mel_output": mel, "stop_tokens": stop})


class SubclassedDecoder(XTTSModelMixin, keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.mel = keras.layers.Dense(M)
        self.stop = keras.layers.Dense(1, activation="sigmoid")

    def call(self, x):
        h = self.hidden(x)
        return {"mel_output": self.mel(h), "stop_tokens": self.stop(h)}


def _check_trained(loss_fn, history, steps):
    losses = history.history["loss"]
    assert len(losses) == EPOCHS and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert int(loss_fn.step_count.numpy()) == steps
    assert int(loss_fn._state.gradient_norm_count.numpy()) == steps  # one norm per train step
    norms = loss_fn.gradient_norm_history().numpy()
    assert norms.size == min(steps, 11) and np.all(norms > 0)
    for v in loss_fn.state_variables:
        x = v.numpy()
        assert x.dtype.kind != "f" or np.all(np.isfinite(x))


@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_fit_dict_outputs(kind, data):
    x, y = data
    model = _functional_decoder() if kind == "functional" else SubclassedDecoder()
    loss_fn = XTTSLoss(implementation=IMPL)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss_fn, jit_compile=False)
    monitor = XTTSLossMonitor(loss_fn)
    history = model.fit(
        _dataset(x, y),
        epochs=EPOCHS,
        verbose=0,
        shuffle=False,
        validation_data=_dataset(x, y),
        callbacks=[monitor],
    )
    # Validation batches (training=False) do not move the state.
    _check_trained(loss_fn, history, EPOCHS * STEPS)
    assert "val_loss" in history.history
    assert "xtts_current_mel_weight" in history.history
    losses = loss_fn.get_losses()
    assert float(losses["stop_loss"]) > 0 and float(losses["mel_loss"]) > 0
    # The reported Keras loss is XTTSLoss's total (one batch: no averaging
    # over batches in between), and evaluating moves no training state.
    whole = tf.data.Dataset.from_tensor_slices((x, y)).batch(N)
    result = model.evaluate(whole, verbose=0, return_dict=True)
    expected = float(loss_fn(y, model(x), training=False))
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)
    assert int(loss_fn.step_count.numpy()) == EPOCHS * STEPS


def test_fit_plain_outputs(data):
    x, y = data
    inp = keras.Input((T, D))
    out = keras.layers.Dense(M)(keras.layers.Dense(16, activation="relu")(inp))
    model = keras.Model(inp, out)  # a plain keras.Model: compile's own loss path
    loss_fn = XTTSLoss(implementation=IMPL)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss_fn, jit_compile=False)
    feed_gradient_norm(model.optimizer, loss_fn)
    history = model.fit(
        x, y["mel_target"], batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=False
    )
    _check_trained(loss_fn, history, EPOCHS * STEPS)


@pytest.mark.parametrize("jit", [False, True])
def test_plain_model_validation_with_the_callback(data, jit):
    """A plain keras.Model passes its loss no training flag: with
    XTTSLossValidation, validation batches in fit and evaluate leave the
    training state alone (only the training batches count as steps) and
    report what a training=False call gives."""
    from myxtts.training import XTTSLossValidation

    x, y = data
    inp = keras.Input((T, D))
    model = keras.Model(inp, keras.layers.Dense(M)(inp))
    loss_fn = XTTSLoss(implementation=IMPL)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss_fn, jit_compile=jit)
    callback = XTTSLossValidation(loss_fn)
    history = model.fit(
        x,
        y["mel_target"],
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        shuffle=False,
        validation_data=(x, y["mel_target"]),
        validation_batch_size=N,
        callbacks=[callback],
    )
    assert int(loss_fn.step_count.numpy()) == 2 * STEPS
    assert loss_fn.update_state_on_call
    before = [v.numpy() for v in loss_fn.training_state_variables]
    result = model.evaluate(x, y["mel_target"], batch_size=N, verbose=0, callbacks=[callback])
    for v, b in zip(loss_fn.training_state_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    expected = float(loss_fn(y["mel_target"], model(x), training=False))
    np.testing.assert_allclose(result, expected, rtol=1e-5)
    np.testing.assert_allclose(history.history["val_loss"][-1], expected, rtol=1e-5)


def test_fit_plain_outputs_with_xtts_model(data):
    x, y = data
    inp = keras.Input((T, D))
    out = keras.layers.Dense(M)(keras.layers.Dense(16, activation="relu")(inp))
    model = XTTSModel(inp, out)
    loss_fn = XTTSLoss(implementation=IMPL)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss_fn, jit_compile=False)
    history = model.fit(
        x, y["mel_target"], batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=False
    )
    _check_trained(loss_fn, history, EPOCHS * STEPS)


@pytest.fixture
def mixed_policy():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


def test_fit_mixed_precision(data, mixed_policy):
    x, y = data
    model = _functional_decoder()  # mel_output is float16 under the policy
    assert model.output["mel_output"].dtype == "float16"
    loss_fn = XTTSLoss(implementation=IMPL)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss_fn, jit_compile=False)
    assert innermost_optimizer(model.optimizer) is not model.optimizer  # LossScaleOptimizer
    history = model.fit(_dataset(x, y), epochs=EPOCHS, verbose=0, shuffle=False)
    _check_trained(loss_fn, history, EPOCHS * STEPS)
    # Unscaled norms: comparable to a float32 model's, not multiplied by the loss scale.
    assert float(loss_fn.get_adaptive_weight_metrics()["avg_gradient_norm"]) < 1e3


def test_fit_jit_compile(data):
    x, y = data
    model = _functional_decoder()
    loss_fn = XTTSLoss(implementation=IMPL)  # the fused op falls back to the reference under XLA
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss_fn, jit_compile=True)
    history = model.fit(_dataset(x, y), epochs=EPOCHS, verbose=0, shuffle=False)
    _check_trained(loss_fn, history, EPOCHS * STEPS)


def test_feed_gradient_norm_is_idempotent_and_retargets():
    opt = keras.optimizers.SGD(0.1)
    a, b = XTTSLoss(implementation=IMPL), XTTSLoss(implementation=IMPL)
    feed_gradient_norm(opt, a)
    apply_fn = opt.apply
    feed_gradient_norm(opt, a)
    assert opt.apply is apply_fn  # not wrapped twice
    v = tf.Variable([1.0, 2.0])
    opt.apply_gradients([(tf.constant([3.0, 4.0]), v)])
    assert a.gradient_norm_history().numpy().tolist() == [5.0]
    feed_gradient_norm(opt, b)
    opt.apply_gradients([(tf.constant([0.0, 2.0]), v)])
    assert a.gradient_norm_history().numpy().tolist() == [5.0]
    assert b.gradient_norm_history().numpy().tolist() == [2.0]
    with pytest.raises(ValueError, match="observe_gradient_norm"):
        feed_gradient_norm(opt, object())


def test_summaries(tmp_path, rng):
    loss_fn = XTTSLoss(implementation=IMPL)
    yt = rng.standard_normal((2, 5, 4)).astype(np.float32)
    loss_fn(yt, yt + 1.0)
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        write_loss_summaries(loss_fn, step=1)
        tf.function(lambda: write_loss_summaries(loss_fn, step=tf.constant(2, tf.int64)))()
    writer.flush()
    files = glob.glob(os.path.join(str(tmp_path), "events.out.tfevents.*"))
    assert files
    values = {}
    for event in tf.compat.v1.train.summary_iterator(files[0]):
        for v in event.summary.value:
            values[(v.tag, event.step)] = float(tf.make_ndarray(v.tensor))
            assert v.metadata.plugin_data.plugin_name == "scalars"
    assert values[("xtts/adaptive/current_mel_weight", 1)] == 2.5
    assert values[("xtts/stability/step_count", 2)] == 1.0
    np.testing.assert_allclose(values[("xtts/losses/mel_loss", 1)], 1.0, rtol=1e-6)


def test_xtts_model_saves_and_loads_compiled(data, tmp_path):
    """keras.saving round trip of a compiled XTTSModel: it loads without
    custom_objects, compiled with an equal XTTSLoss (its settings; the loss's
    running state is not part of a .keras file: XTTSLossBackup keeps it), the
    same weights and optimizer, gradient norms fed again, and it trains on."""
    x, y = data
    inp = keras.Input((T, D))
    model = XTTSModel(inp, {"mel_output": keras.layers.Dense(M)(inp)})
    loss_fn = XTTSLoss.myxtts_original(mel_loss_weight=3.0, mel_noise_seed=7)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss_fn, jit_compile=False)
    ys = {k: y[k] for k in ("mel_target", "mel_lengths")}
    model.fit(x, ys, batch_size=BATCH, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is XTTSModel and isinstance(loaded.loss, XTTSLoss)
    assert loaded.loss.config == loss_fn.config
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy()
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0)["mel_output"], model.predict(x, verbose=0)["mel_output"]
    )
    loaded.fit(x, ys, batch_size=BATCH, epochs=1, verbose=0)
    assert int(loaded.loss.step_count.numpy()) == STEPS
    assert int(loaded.loss._state.gradient_norm_count.numpy()) == STEPS
